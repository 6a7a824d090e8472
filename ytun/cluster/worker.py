"""A worker process's side of ``ytun server --workers N``: its channel to the supervising
parent, the ownership table it reads, and the hand-off sockets to and from its peers."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from ..tunnel.peers import ConnectionKind
from .channel import Channel, Message
from .handoff import Adopt, HandOffReceiver, HandOffSender
from .ownership import Ownership, ParentOwnership

logger = logging.getLogger("ytun.cluster")

#: Set by the parent in each worker's environment; its absence means "not a worker".
WORKER_VARIABLE = "YTUN_WORKER"


@dataclass(frozen=True)
class WorkerSettings:
    """What the parent tells a worker it starts."""

    node: str  # this worker's name: its slot, "0" to "N-1"
    channel_fd: int  # the inherited end of the socket to the parent
    directory: str  # where the workers' hand-off sockets live (the parent's, mode 0700)
    via_mark: str  # the server's Via mark, the same in every worker
    port: int  # the public port (the parent resolved a port 0)
    # The salt of the client keys in every worker's in-memory registry: ownership is
    # keyed by client key, so all workers must derive the same key from an identifier.
    salt: str = ""
    #: The parent's listening sockets to accept on (``inherit``); empty: listen with
    #: SO_REUSEPORT on ``port`` (``reuse_port``).
    listen_fds: tuple[int, ...] = ()

    @property
    def listens_on_tcp_routes(self) -> bool:
        """Whether this worker listens on the TCP routes' ports: all do with SO_REUSEPORT,
        only worker 0 with an inherited listener (the others take the routes' connections
        it hands over)."""
        return not self.listen_fds or self.node == "0"

    def to_environ(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerSettings | None:
        text = environ.get(WORKER_VARIABLE)
        if not text:
            return None
        values = json.loads(text)
        values["listen_fds"] = tuple(values.get("listen_fds", ()))
        return cls(**values)


class WorkerPeers:
    """The tunnel server's :class:`~ytun.tunnel.peers.Peers`, for one worker."""

    def __init__(self, ownership: Ownership, sender: HandOffSender) -> None:
        self.ownership = ownership
        self.sender = sender

    def hand_off(
        self, key: str, kind: ConnectionKind, transport: asyncio.BaseTransport, data: bytes
    ) -> bool:
        node = self.ownership.holder(key)
        if node is None or node == self.ownership.node:
            return False
        if transport.get_extra_info("sslcontext") is not None:
            return False  # the TLS session lives in this process: it cannot move
        return self.sender.send(node, kind, transport, data)

    async def claim(self, key: str) -> bool:
        return await self.ownership.claim(key)

    def release(self, key: str) -> None:
        self.ownership.release(key)


class Worker:
    """Ties to the parent and the peers. :meth:`join` first, then :meth:`serve` once the
    server exists, :meth:`ready` once it listens; :attr:`parent_gone` is set if the parent
    dies (the worker then stops)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.parent_gone = asyncio.Event()
        sock = socket.socket(fileno=settings.channel_fd)
        self._channel = Channel(sock, self._received, self._parent_closed)
        self.ownership = ParentOwnership(settings.node, self._channel)
        self.sender = HandOffSender(settings.directory)
        self.peers = WorkerPeers(self.ownership, self.sender)
        self._receiver: HandOffReceiver | None = None

    async def join(self) -> None:
        await self._channel.start()

    def serve(self, adopt: Adopt) -> None:
        """Take connections handed over by the other workers."""
        self._receiver = HandOffReceiver(self.settings.directory, self.settings.node, adopt)
        self._receiver.start()

    def ready(self) -> None:
        self._channel.send({"t": "ready"})

    @property
    def adopted(self) -> int:
        return self._receiver.adopted if self._receiver is not None else 0

    def _received(self, message: Message) -> None:
        if not self.ownership.received(message):
            logger.debug("unknown message from the parent: %s", message.get("t"))

    def _parent_closed(self) -> None:
        self.ownership.parent_gone()
        self.parent_gone.set()

    def stop_taking(self) -> None:
        """Stopping: no more connections from the other workers."""
        if self._receiver is not None:
            self._receiver.close()
        self.sender.close()
        logger.info(
            "worker %s: handed %d connections to other workers, adopted %d",
            self.settings.node,
            self.sender.sent,
            self.adopted,
        )

    def close(self) -> None:
        self._channel.close()
