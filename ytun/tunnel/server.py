"""The tunnel server: accepts clients on the control path, routes public HTTP, WebSocket
and TCP traffic to them over their yamux sessions.

This module is the facade; the jobs live in :mod:`.front` (public HTTP connections),
:mod:`.links` (connected clients), :mod:`.tcp` (TCP tunnels) and :mod:`.connections`
(the idle policy)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import SessionClosedError
from ..yamux import Config
from . import koding
from .access import AccessLog, AccessLogSetting, open_access_log
from .connections import PublicConnections
from .events import StateFeed
from .front import HEAD_TIMEOUT, Network, PublicProtocol
from .http1 import MAX_HEAD_SIZE, RequestHead, error_response
from .limits import default_max_connections
from .links import ClientLink, ClientLinks, ServerState, ServerStateChange
from .peers import ConnectionKind, Peers
from .ratelimit import TokenBuckets
from .registry import MemoryRegistry, Registry
from .splice import AnswerAndClose
from .tcp import TcpListeners
from .tls import TlsListener

logger = logging.getLogger("ytun.server")

AT_CAPACITY_ANSWER = error_response(503, "server at capacity, try again later", close=True)

__all__ = ["ClientInfo", "Server", "ServerState", "ServerStateChange"]


@dataclass(frozen=True)
class ClientInfo:
    """A connected client, labelled by one of its hosts (never by its identifier)."""

    label: str
    peer: tuple[Any, ...] | None
    connected_at: float
    streams: int


class Server:
    """Routes public traffic by Host (or by TCP address) to connected tunnel clients.

    Use :meth:`serve` to listen, or pass :meth:`protocol_factory` to
    ``loop.create_server`` yourself: one listener serves both the public side and the
    clients' control connections. Observe clients with ``on_state_change`` or
    :meth:`state_changes`.
    """

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        yamux_config: Config | None = None,
        forwarded_headers: bool = True,
        trust_forwarded: Iterable[str | Network] = (),
        access_log: AccessLogSetting = None,
        stream_timeout: float = koding.CONTROL_TIMEOUT,
        handshake_timeout: float = koding.CONTROL_TIMEOUT,
        duplicate_ping_timeout: float = 2.0,
        max_head_size: int = MAX_HEAD_SIZE,
        head_timeout: float = HEAD_TIMEOUT,
        idle_timeout: float | None = 120.0,
        max_connections: int | None = None,
        refusal_rate: float = 1.0,
        refusal_burst: int = 10,
        on_state_change: Callable[[ServerStateChange], None] | None = None,
        peers: Peers | None = None,
        via_mark: bytes | None = None,
    ) -> None:
        self.registry = registry if registry is not None else MemoryRegistry()
        #: The other worker processes of this server, or None when it runs alone.
        self.peers = peers
        #: Replace the public client's X-Forwarded-*/Forwarded fields with ours and mark
        #: requests with Via; False forwards request heads untouched.
        self.forwarded_headers = forwarded_headers
        #: Networks (CIDR) of proxies in front of this server: their forwarding fields
        #: are kept and appended to instead of replaced.
        self.trust_forwarded: tuple[Network, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in trust_forwarded
        )
        #: None (off), an AccessLog, "stdout", "stderr" or a file path to append to.
        self.access_log: AccessLog | None = open_access_log(access_log)
        self._owns_access_log = not isinstance(access_log, AccessLog)
        # Workers of one server share one mark: a request that comes back through any of
        # them is a loop.
        self.via_mark = via_mark or b"ytun-" + secrets.token_hex(8).encode()
        self.loops_reported: set[str] = set()
        self.max_head_size = max_head_size
        #: A request head (or the CONNECT head) must arrive whole within this time.
        self.head_timeout = head_timeout
        #: Public and client connections held at once; more are answered 503 and closed.
        self.max_connections = (
            max_connections if max_connections is not None else default_max_connections()
        )
        if self.max_connections <= 0:
            raise ValueError("max_connections must be positive")
        self._at_capacity = False
        self._states: StateFeed[ServerStateChange] = StateFeed(on_state_change, logger)
        self._public = PublicConnections(idle_timeout)
        self._links = ClientLinks(
            self.registry,
            yamux_config=yamux_config,
            stream_timeout=stream_timeout,
            handshake_timeout=handshake_timeout,
            duplicate_ping_timeout=duplicate_ping_timeout,
            on_change=self._states.publish,
            on_client_leaving=self._public.client_leaving,
            refusals=TokenBuckets(refusal_rate, refusal_burst),
            peers=peers,
        )
        self._tcp = TcpListeners(self.registry, self.link_for, self.access_log, peers=peers)
        self._servers: list[asyncio.AbstractServer] = []

    # -- configuration -------------------------------------------------------------------

    def add_host(self, host: str, identifier: str) -> None:
        """Route requests whose Host is ``host`` (``name`` or ``name:port``) to a client."""
        self.registry.add_host(host, identifier)

    def delete_host(self, host: str) -> None:
        self.registry.delete_host(host)

    async def add_addr(
        self,
        address: str | socket.socket,
        identifier: str,
        *,
        ip: str | None = None,
        reuse_port: bool = False,
        listen: bool = True,
    ) -> tuple[str, int]:
        """Tunnel raw TCP: listen on ``address`` (``host:port`` or a listening socket) and
        route its connections to a client, by port, or by local IP when ``ip`` is given.
        ``reuse_port`` shares the port with other processes (SO_REUSEPORT); ``listen=False``
        only routes (another process listens and hands the connections over). Returns the
        listening address."""
        return await self._tcp.add(address, identifier, ip, reuse_port=reuse_port, listen=listen)

    def delete_addr(self, port: int, *, ip: str | None = None) -> None:
        """Remove a TCP route; the listener closes when no port route is left on it.
        Connections already open carry on."""
        self._tcp.delete(port, ip)

    # -- observing -----------------------------------------------------------------------

    def state_changes(self) -> AsyncIterator[ServerStateChange]:
        """Every client state change from this call on, until the iterator is closed."""
        return self._states.subscribe()

    @property
    def clients(self) -> list[ClientInfo]:
        """The connected clients (labelled by host, never by identifier)."""
        return [
            ClientInfo(link.label, link.peer, link.connected_at, link.streams)
            for link in self._links
            if link.connected
        ]

    @property
    def in_flight(self) -> int:
        """Public connections with a request still waiting for its answer."""
        return self._public.in_flight

    def is_connected(self, identifier: str) -> bool:
        return self._links.get(identifier) is not None

    # -- the front door's port (what PublicProtocol may use) -----------------------------

    def lookup_host(self, host: str) -> str | None:
        return self.registry.lookup_host(host)

    def link_for(self, identifier: str) -> ClientLink | None:
        """The connected client for ``identifier``, if any."""
        return self._links.get(identifier)

    def control_connect(
        self, public: PublicProtocol, head: RequestHead, extra: bytes
    ) -> bytes | None:
        """A CONNECT on the control path: None once the connection is taken (a client owns
        it, or it was closed), else the answer to write (it stays a public connection)."""
        answer = self._links.connect(public, head, extra)
        if answer is None:
            # The connection is the client's session now: close() must leave it to the
            # session (closing an asyncio SSL transport twice breaks writes).
            self._public.closed(public)
        return answer

    def opened(self, public: PublicProtocol) -> None:
        self._public.opened(public)

    def closed(self, public: PublicProtocol) -> None:
        self._public.closed(public)

    # -- listening -----------------------------------------------------------------------

    def adopt(self, sock: socket.socket, kind: ConnectionKind, data: bytes) -> None:
        """Serve a connection another worker accepted (and read ``data`` from)."""
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.BaseProtocol]
        if kind == "tcp":
            factory = self._tcp.adopted_protocol
        elif self._held() >= self.max_connections:
            factory = self.protocol_factory  # the at-capacity answer
        else:
            factory = lambda: PublicProtocol(  # noqa: E731
                self, head_timeout=self.head_timeout, handed_in=data
            )
        adopting = loop.create_task(loop.connect_accepted_socket(factory, sock))
        adopting.add_done_callback(_adopted)

    def _held(self) -> int:
        return len(self._public) + len(self._links)

    def protocol_factory(self) -> asyncio.Protocol:
        held = self._held()
        if held >= self.max_connections:
            if not self._at_capacity:  # once per episode, not once per connection
                self._at_capacity = True
                logger.warning(
                    "refusing connections: %d held, the limit is %d (max_connections; "
                    "raise it, and the descriptor limit, ulimit -n)",
                    held,
                    self.max_connections,
                )
            return AnswerAndClose(AT_CAPACITY_ANSWER)
        if self._at_capacity and held < self.max_connections * 0.9:
            self._at_capacity = False
            logger.info("accepting connections again: %d held", held)
        return PublicProtocol(self, head_timeout=self.head_timeout)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl: ssl_module.SSLContext | None = None,
        sock: socket.socket | None = None,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> asyncio.AbstractServer:
        """Start listening; the returned server tells the bound address. ``reuse_port``
        shares the port with other processes (SO_REUSEPORT: the kernel spreads the
        connections)."""
        loop = asyncio.get_running_loop()
        listener: asyncio.AbstractServer
        if ssl is not None:  # looks at each first byte: plain HTTP gets an answer, not silence
            if sock is None:
                sock = socket.create_server((host, port), backlog=backlog, reuse_port=reuse_port)
            else:
                sock.listen(backlog)
            listener = TlsListener(sock, self.protocol_factory, ssl)
        elif sock is not None:
            listener = await loop.create_server(self.protocol_factory, sock=sock, backlog=backlog)
        else:
            listener = await loop.create_server(
                self.protocol_factory, host, port, backlog=backlog, reuse_port=reuse_port or None
            )
        self._servers.append(listener)
        return listener

    async def close(self, grace: float = 10.0) -> None:
        """Stop accepting, tell clients (Go Away), let requests in flight finish for up to
        ``grace`` seconds, then close every connection."""
        for listener in self._servers:
            listener.close()
        self._tcp.close()
        self._public.stop()
        self._links.go_away_all()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._public.in_flight:
            await asyncio.sleep(0.05)
        self._public.close_all()
        self._links.close_all(SessionClosedError("server closed"))
        for listener in self._servers:
            await listener.wait_closed()
        await self._tcp.wait_closed()
        self._servers.clear()
        if self.access_log is not None:
            if self._owns_access_log:
                self.access_log.close()
            else:
                self.access_log.flush()


def _adopted(task: asyncio.Task[object]) -> None:
    # The connection was reset while it moved between workers: nothing to answer.
    if not task.cancelled() and task.exception() is not None:
        logger.debug("a handed-over connection could not be adopted: %s", task.exception())
