"""Raw TCP tunnels on the server: listeners whose connections are piped to a client."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..registry import Registry
from . import koding
from .addr import split_host_port
from .links import ClientLink
from .observe import RequestObserver
from .splice import Pipe, PipeEnd

if TYPE_CHECKING:
    from .peers import Peers

logger = logging.getLogger("ytun.server")

LinkLookup = Callable[[str], "ClientLink | None"]


class TcpListeners:
    """The server's TCP tunnel listeners, one per port; routes live in the registry."""

    def __init__(
        self,
        registry: Registry,
        link_for: LinkLookup,
        observer: RequestObserver | None = None,
        *,
        peers: Peers | None = None,
    ) -> None:
        self._registry = registry
        self._link_for = link_for
        #: Told when each connection ends (the server sets it; new connections use it).
        self.observer = observer
        #: Connections accepted on the tunnel listeners so far.
        self.accepted = 0
        self._peers = peers
        self._listeners: dict[int, asyncio.Server] = {}

    async def add(
        self,
        address: str | socket.socket,
        identifier: str,
        ip: str | None,
        *,
        reuse_port: bool,
        listen: bool = True,
    ) -> tuple[str, int]:
        """Listen on ``address`` (once per port) and route it; returns the bound address.
        ``listen=False`` only routes: another process listens and hands connections over."""
        loop = asyncio.get_running_loop()
        if not listen and isinstance(address, str):
            host, port = split_host_port(address)
            self._registry.add_addr(port, identifier, ip)
            return host, port
        if isinstance(address, socket.socket):
            sock_name = address.getsockname()
        else:
            sock_name = split_host_port(address)
        port = sock_name[1]
        existing = self._listeners.get(port) if port else None
        if existing is not None:  # only the same listener again (e.g. for another ip route)
            bound = [sock.getsockname()[0] for sock in existing.sockets]
            same = (
                [sock.fileno() for sock in existing.sockets] == [address.fileno()]
                if isinstance(address, socket.socket)
                else sock_name[0] in bound
            )
            if not same:
                raise OSError(
                    errno.EADDRINUSE, f"port {port} is already tunnelled on {', '.join(bound)}"
                )
        if port == 0 or port not in self._listeners:
            if isinstance(address, socket.socket):
                listener = await loop.create_server(self._protocol, sock=address)
            else:
                listener = await loop.create_server(
                    self._protocol, sock_name[0], port, reuse_port=reuse_port or None
                )
            sock_name = listener.sockets[0].getsockname()
            port = sock_name[1]
            self._listeners[port] = listener
        self._registry.add_addr(port, identifier, ip)
        return sock_name[0], port

    async def listen(self, host: str, port: int) -> None:
        """Listen on ``host:port`` for a port route already in the registry (one kept in a
        state file across a restart): its owner is there, only the listener is new."""
        if port in self._listeners:
            return
        loop = asyncio.get_running_loop()
        self._listeners[port] = await loop.create_server(self._protocol, host, port)

    def delete(self, port: int, ip: str | None) -> None:
        self._registry.delete_addr(port, ip)
        if ip is None and port in self._listeners:
            self._listeners.pop(port).close()

    @property
    def ports(self) -> set[int]:
        """The ports listened on."""
        return set(self._listeners)

    def close(self) -> None:
        for listener in self._listeners.values():
            listener.close()

    async def wait_closed(self) -> None:
        for listener in self._listeners.values():
            await listener.wait_closed()
        self._listeners.clear()

    def _protocol(self) -> asyncio.BaseProtocol:
        self.accepted += 1
        return _TcpPublic(self._registry, self._link_for, self.observer, self._peers)

    def adopted_protocol(self) -> asyncio.BaseProtocol:
        """For a connection another worker accepted: it is not handed on again."""
        return _TcpPublic(self._registry, self._link_for, self.observer)

    def hopped_protocol(self, key: str, port: int, peer: str) -> asyncio.Protocol:
        """For a connection another node accepted on its TCP ``port`` for client ``key``
        (its local address here is the hop's): it is not handed on again."""
        return _TcpPublic(self._registry, self._link_for, self.observer, route=(key, port, peer))


class _TcpStreamEnd(PipeEnd):
    """Stream side of a public TCP connection's pipe."""

    def tunnel_failed(self, message: str) -> None:
        logger.warning("TCP tunnel failed: %s", message)
        self._pipe.abort()


class _TcpStreamEndCounted(_TcpStreamEnd):
    """The stream side, counting the bytes that go to the public client."""

    __slots__ = ("sent",)

    def __init__(self, pipe: Pipe, side: int) -> None:
        super().__init__(pipe, side)
        self.sent = 0

    def data_received(self, data: bytes) -> None:
        self.sent += len(data)
        self._pipe._data(self._side, data)


class _TcpPublic(PipeEnd):
    """A connection accepted on a TCP tunnel listener; logged when it ends when there is
    an observer."""

    def __init__(
        self,
        registry: Registry,
        link_for: LinkLookup,
        observer: RequestObserver | None = None,
        peers: Peers | None = None,
        route: tuple[str, int, str] | None = None,
    ) -> None:
        super().__init__(Pipe(), 1)
        self._route = route  # key, public port and peer given by the node that accepted it
        self._registry = registry
        self._peers = peers
        self._link_for = link_for
        self._observer = observer
        self._stream_end: _TcpStreamEnd | None = None
        self._received = 0
        self._started = 0.0
        self._peer = "-"
        self._port = 0

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        self._pipe._data(self._side, data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        end = self._stream_end
        if self._observer is not None and end is not None:
            self._stream_end = None
            sent = end.sent if isinstance(end, _TcpStreamEndCounted) else 0
            self._observer.tcp_end(self._peer, self._port, sent, self._received, self._started)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # reading waits for the stream
        ip, port = transport.get_extra_info("sockname")[:2]
        if self._route is not None:
            port = self._route[1]
        if self._observer is not None:
            self._started = time.monotonic()
            peer = transport.get_extra_info("peername")
            self._peer = peer[0] if isinstance(peer, tuple) else "-"
            if self._route is not None:
                self._peer = self._route[2]
            self._port = port
        key = self._route[0] if self._route is not None else self._registry.lookup_addr(ip, port)
        link = self._link_for(key) if key is not None else None
        # Nothing is read before the stream exists: no bytes go along to another worker.
        if (
            link is None
            and key is not None
            and self._peers is not None
            and self._peers.hand_off(key, "tcp", transport, b"")
        ):
            self._observer = None  # logged by the process that serves it
            if transport.get_protocol() is self:  # a duplicate of the socket lives on there
                transport.abort()  # type: ignore[attr-defined]
            return
        if link is None:
            logger.warning("no client for TCP connection on %s:%d; closing", ip, port)
            transport.close()
            return
        end = (
            _TcpStreamEndCounted(self._pipe, 0) if self._observer else _TcpStreamEnd(self._pipe, 0)
        )
        self._stream_end = end
        try:
            link.request_stream(koding.TCP, port, end)
        except ConnectionError:
            transport.close()
