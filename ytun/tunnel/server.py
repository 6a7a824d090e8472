"""The tunnel server: accepts clients on the control path, routes public HTTP, WebSocket
and TCP traffic to them over their yamux sessions."""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import socket
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import SessionClosedError
from ..yamux import Config, Session
from . import koding
from .addr import split_host_port
from .front import STRAY, PublicProtocol
from .http1 import RequestHead, error_response
from .registry import MemoryRegistry, Registry
from .splice import Pipe, PipeEnd

logger = logging.getLogger("ytun.server")

Callback = Callable[[], Any]


class ServerState(enum.IntEnum):
    UNKNOWN = 0
    CONNECTED = 3
    CLOSED = 5


@dataclass(frozen=True)
class ServerStateChange:
    """A client's state as the server sees it. ``label`` is a host of the client, never its
    identifier, so events can be logged safely."""

    label: str
    previous: ServerState
    current: ServerState
    error: BaseException | None = None


@dataclass(frozen=True)
class ClientInfo:
    label: str
    peer: tuple[Any, ...] | None
    connected_at: float
    streams: int


class Server:
    """Routes public traffic by Host (or by TCP address) to connected tunnel clients.

    Use :meth:`serve` to listen, or pass :meth:`protocol_factory` to
    ``loop.create_server`` yourself: one listener serves both the public side and the
    clients' control connections.
    """

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        yamux_config: Config | None = None,
        forwarded_headers: bool = True,
        stream_timeout: float = koding.CONTROL_TIMEOUT,
        handshake_timeout: float = koding.CONTROL_TIMEOUT,
        duplicate_ping_timeout: float = 2.0,
        max_head_size: int = 64 * 1024,
        idle_timeout: float | None = 120.0,
        on_state_change: Callable[[ServerStateChange], None] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else MemoryRegistry()
        self.yamux_config = yamux_config
        self.forwarded_headers = forwarded_headers
        self.stream_timeout = stream_timeout
        self.handshake_timeout = handshake_timeout
        self.duplicate_ping_timeout = duplicate_ping_timeout
        self.max_head_size = max_head_size
        self.idle_timeout = idle_timeout
        self._sweeper: asyncio.TimerHandle | None = None
        self._links: dict[str, ClientLink] = {}
        self._states: dict[str, ServerState] = {}
        self._on_connect: dict[str, Callback] = {}
        self._on_disconnect: dict[str, Callback] = {}
        self._listeners: list[Callable[[ServerStateChange], None]] = []
        if on_state_change is not None:
            self._listeners.append(on_state_change)
        self._public_connections: set[PublicProtocol] = set()
        self._servers: list[asyncio.Server] = []
        self._tcp_servers: dict[int, asyncio.Server] = {}

    # -- configuration -------------------------------------------------------------------

    def add_host(self, host: str, identifier: str) -> None:
        """Route requests whose Host is ``host`` (``name`` or ``name:port``) to a client."""
        self.registry.add_host(host, identifier)

    def delete_host(self, host: str) -> None:
        self.registry.delete_host(host)

    async def add_addr(
        self, address: str | socket.socket, identifier: str, *, ip: str | None = None
    ) -> tuple[str, int]:
        """Tunnel raw TCP: listen on ``address`` (``host:port`` or a listening socket) and
        route its connections to a client, by port, or by local IP when ``ip`` is given.
        Returns the listening address."""
        loop = asyncio.get_running_loop()
        if isinstance(address, socket.socket):
            sock_name = address.getsockname()
        else:
            host, port = split_host_port(address)
            sock_name = (host, port)
        port = sock_name[1]
        existing = self._tcp_servers.get(port) if port else None
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
        if port == 0 or port not in self._tcp_servers:
            if isinstance(address, socket.socket):
                listener = await loop.create_server(lambda: _TcpPublic(self), sock=address)
            else:
                listener = await loop.create_server(lambda: _TcpPublic(self), sock_name[0], port)
            sock_name = listener.sockets[0].getsockname()
            port = sock_name[1]
            self._tcp_servers[port] = listener
        self.registry.add_addr(port, identifier, ip)
        return sock_name[0], port

    def delete_addr(self, port: int, *, ip: str | None = None) -> None:
        """Remove a TCP route; the listener closes when no port route is left on it.
        Connections already open carry on."""
        self.registry.delete_addr(port, ip)
        if ip is None and port in self._tcp_servers:
            self._tcp_servers.pop(port).close()

    def on_connect(self, identifier: str, callback: Callback) -> None:
        """Call ``callback()`` every time the client with ``identifier`` connects."""
        self._on_connect[identifier] = callback

    def on_disconnect(self, identifier: str, callback: Callback) -> None:
        """Call ``callback()`` every time the client with ``identifier`` goes away."""
        self._on_disconnect[identifier] = callback

    def add_state_listener(self, callback: Callable[[ServerStateChange], None]) -> None:
        self._listeners.append(callback)

    @property
    def clients(self) -> list[ClientInfo]:
        """The connected clients (labelled by host, never by identifier)."""
        return [
            ClientInfo(link.label, link.peer, link.connected_at, link.session.stream_count)
            for link in self._links.values()
            if link.connected
        ]

    def is_connected(self, identifier: str) -> bool:
        link = self._links.get(identifier)
        return link is not None and link.connected

    # -- listening -----------------------------------------------------------------------

    def protocol_factory(self) -> PublicProtocol:
        return PublicProtocol(self)

    def _public_connection_made(self, public: PublicProtocol) -> None:
        self._public_connections.add(public)
        if self._sweeper is None and self.idle_timeout is not None:
            self._sweeper = asyncio.get_running_loop().call_later(
                self.idle_timeout / 2, self._sweep_idle
            )

    def _sweep_idle(self) -> None:
        """Close public connections that sent nothing and awaited nothing for a while.

        A connection is closed on the second sweep in a row that finds it idle, so after
        between ``idle_timeout`` and 1.5 × ``idle_timeout`` of silence."""
        self._sweeper = None
        for public in list(self._public_connections):
            if public.active or not public.idle:
                public.active = False
                public.quiet_sweeps = 0
            else:
                public.quiet_sweeps += 1
                if public.quiet_sweeps >= 2:
                    public.close()
        if self._public_connections and self.idle_timeout is not None:
            self._sweeper = asyncio.get_running_loop().call_later(
                self.idle_timeout / 2, self._sweep_idle
            )

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl: ssl_module.SSLContext | None = None,
        sock: socket.socket | None = None,
        backlog: int = 1024,
    ) -> asyncio.Server:
        """Start listening; the returned server tells the bound address."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            listener = await loop.create_server(
                self.protocol_factory, sock=sock, ssl=ssl, backlog=backlog
            )
        else:
            listener = await loop.create_server(
                self.protocol_factory, host, port, ssl=ssl, backlog=backlog
            )
        self._servers.append(listener)
        return listener

    async def close(self, grace: float = 10.0) -> None:
        """Stop accepting, tell clients (Go Away), let requests in flight finish for up to
        ``grace`` seconds, then close every connection."""
        for listener in self._servers + list(self._tcp_servers.values()):
            listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for link in list(self._links.values()):
            link.session.go_away()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            not public.idle for public in self._public_connections
        ):
            await asyncio.sleep(0.05)
        for public in list(self._public_connections):
            public.close()
        for link in list(self._links.values()):
            link.disconnect(SessionClosedError("server closed"))
        for listener in self._servers + list(self._tcp_servers.values()):
            await listener.wait_closed()
        self._servers.clear()
        self._tcp_servers.clear()

    # -- clients -------------------------------------------------------------------------

    def _take_over_control(self, public: PublicProtocol, head: RequestHead, extra: bytes) -> None:
        """A CONNECT on the control path: check the identifier, then run yamux on it."""
        transport = public.transport
        assert transport is not None
        identifier = head.identifier.decode("latin-1")
        if not identifier or not self.registry.has_host(identifier):
            self._set_state(
                identifier,
                ServerState.CLOSED,
                ConnectionRefusedError("no host associated for identifier"),
            )
            # A plain HTTP answer; the connection stays keep-alive, as in the original.
            public.control_refused(
                error_response(
                    502, "no host associated for identifier. please use server.AddHost()"
                ),
                extra,
            )
            return
        existing = self._links.get(identifier)
        if existing is None:
            self._accept_client(identifier, transport, extra)
            return
        # Duplicate identifier: keep a live client, replace a dead one (no kick-both flapping).
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(
            self._resolve_duplicate(existing, identifier, transport, extra)
        )
        task.add_done_callback(_report)

    async def _resolve_duplicate(
        self, existing: ClientLink, identifier: str, transport: asyncio.Transport, extra: bytes
    ) -> None:
        try:
            await asyncio.wait_for(existing.session.ping(), self.duplicate_ping_timeout)
            alive = True
        except (asyncio.TimeoutError, SessionClosedError):
            alive = False
        if transport.is_closing():
            return
        if alive and self._links.get(identifier) is existing:
            logger.warning("refused a second client for %s: the first one is alive", existing.label)
            transport.write(error_response(502, "control conn already exist. \n", close=True))
            transport.close()
            return
        if self._links.get(identifier) is existing:
            logger.warning("replacing the unresponsive client for %s", existing.label)
            existing.disconnect(SessionClosedError("replaced by a new connection"))
        transport.resume_reading()
        self._accept_client(identifier, transport, extra)

    def _accept_client(self, identifier: str, transport: asyncio.Transport, extra: bytes) -> None:
        # The connection is the client's session now, no longer a public one: close() must
        # leave it to the session (closing an asyncio SSL transport twice breaks writes).
        self._public_connections.discard(transport.get_protocol())  # type: ignore[arg-type]
        transport.write(koding.CONNECTED_RESPONSE)
        link = ClientLink(self, identifier)
        self._links[identifier] = link
        link.start(transport, extra)

    def _link_connected(self, link: ClientLink) -> None:
        logger.info("client for %s connected from %s", link.label, link.peer)
        self._set_state(link.identifier, ServerState.CONNECTED)
        self._fire(self._on_connect, link.identifier)

    def _link_gone(self, link: ClientLink, error: BaseException | None) -> None:
        if self._links.get(link.identifier) is link:
            del self._links[link.identifier]
        logger.info("client for %s disconnected: %s", link.label, error)
        self._set_state(link.identifier, ServerState.CLOSED, error)
        self._fire(self._on_disconnect, link.identifier)

    def _fire(self, callbacks: dict[str, Callback], identifier: str) -> None:
        callback = callbacks.get(identifier)
        if callback is not None:
            try:
                callback()
            except Exception:
                logger.exception("connect/disconnect callback failed")

    def _set_state(
        self, identifier: str, state: ServerState, error: BaseException | None = None
    ) -> None:
        previous = self._states.get(identifier, ServerState.UNKNOWN)
        self._states[identifier] = state
        change = ServerStateChange(self.registry.label(identifier), previous, state, error)
        for callback in list(self._listeners):
            try:
                callback(change)
            except Exception:
                logger.exception("server state listener failed")


class ClientLink:
    """One connected client: its yamux session, control stream and stream waiters."""

    def __init__(self, server: Server, identifier: str) -> None:
        self._server = server
        self.identifier = identifier
        self.label = server.registry.label(identifier)
        self.connected = False
        self.draining = False
        self.connected_at = 0.0
        self.peer: tuple[Any, ...] | None = None
        self._control: _ServerControl | None = None
        self._waiters: deque[_StreamWaiter] = deque()
        self._gone = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self, transport: asyncio.Transport, extra: bytes) -> None:
        self.peer = transport.get_extra_info("peername")
        self.session = Session(
            client=False,
            config=self._server.yamux_config,
            protocol_factory=self._next_protocol,
            on_remote_go_away=self._client_leaving,
        )
        self.session.take_over(transport, extra)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._server.handshake_timeout, self._handshake_timed_out)
        closed = loop.create_task(self.session.wait_closed())
        closed.add_done_callback(lambda _: self.disconnect(self.session._error))

    def _client_leaving(self) -> None:
        """The client sent Go Away: new requests get 502, idle streams to it are ended."""
        self.draining = True
        for public in list(self._server._public_connections):
            public.client_leaving(self.identifier)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if not self.connected:
            self.disconnect(TimeoutError("timeout getting session"))

    def _next_protocol(self) -> asyncio.BaseProtocol:
        """Hand the next inbound stream to whoever asked first (strictly FIFO)."""
        if self._control is None:
            self._control = _ServerControl(self)
            return self._control
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.cancel_timer()
            if not waiter.expired:
                return waiter.protocol
            return STRAY()  # the request timed out: its late stream is closed
        return STRAY()

    def request_stream(self, kind: int, port: int, protocol: Any) -> None:
        """Ask the client for a stream; ``protocol`` is attached to it when it arrives, or
        told ``tunnel_failed(message)``. Sending and queueing happen together."""
        if not self.connected or self._control is None or self.draining:
            raise ConnectionError("no client session established")
        waiter = _StreamWaiter(protocol)
        waiter.timer = asyncio.get_running_loop().call_later(
            self._server.stream_timeout, waiter.expire
        )
        self._control.send(koding.control_message(kind, port))
        self._waiters.append(waiter)

    def handshake_done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.connected = True
        self.connected_at = time.time()
        self._server._link_connected(self)

    def disconnect(self, error: BaseException | None) -> None:
        if self._gone:
            return
        self._gone = True
        was_connected = self.connected
        self.connected = False
        if self._timer is not None:
            self._timer.cancel()
        self.session.close()
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.cancel_timer()
            if not waiter.expired:
                waiter.protocol.tunnel_failed("no client session established")
        if was_connected or self._server._links.get(self.identifier) is self:
            self._server._link_gone(self, error)


class _StreamWaiter:
    __slots__ = ("protocol", "timer", "expired")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        self.timer = None
        self.expired = True
        self.protocol.tunnel_failed("timeout getting session")


class _ServerControl(asyncio.Protocol):
    """Control stream, server side: the handshake, then JSON ControlMessages out."""

    def __init__(self, link: ClientLink) -> None:
        self._link = link
        self._buffer = b""
        self._decoder = koding.ControlDecoder()
        self._stream: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._stream = transport  # type: ignore[assignment]

    def send(self, message: bytes) -> None:
        assert self._stream is not None
        if self._stream.is_closing():
            raise ConnectionError("control stream closed")
        self._stream.write(message)

    def data_received(self, data: bytes) -> None:
        if not self._link.connected:
            self._buffer += data
            size = len(koding.HANDSHAKE_REQUEST)
            if not (koding.HANDSHAKE_REQUEST.startswith(self._buffer[:size])):
                self._link.disconnect(ConnectionError("handshake aborted"))
                return
            if len(self._buffer) < size:
                return
            data, self._buffer = self._buffer[size:], b""
            self._stream.write(koding.HANDSHAKE_RESPONSE)  # type: ignore[union-attr]
            self._link.handshake_done()
            if not data:
                return
        try:
            self._decoder.feed(data)  # the Go client never sends any; we only validate
        except ValueError as exc:
            self._link.disconnect(ConnectionError(f"bad control message: {exc}"))

    def eof_received(self) -> bool:
        self._link.disconnect(ConnectionError("control stream closed (EOF)"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.disconnect(exc or ConnectionError("control stream closed"))


class _TcpStreamEnd(PipeEnd):
    """Stream side of a public TCP connection's pipe."""

    def tunnel_failed(self, message: str) -> None:
        logger.warning("TCP tunnel failed: %s", message)
        self._pipe.abort()


class _TcpPublic(PipeEnd):
    """A connection accepted on a TCP tunnel listener."""

    def __init__(self, server: Server) -> None:
        super().__init__(Pipe(), 1)
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # reading waits for the stream
        ip, port = transport.get_extra_info("sockname")[:2]
        identifier = self._server.registry.lookup_addr(ip, port)
        link = self._server._links.get(identifier) if identifier is not None else None
        if link is None or not link.connected:
            logger.warning("no client for TCP connection on %s:%d; closing", ip, port)
            transport.close()
            return
        try:
            link.request_stream(koding.TCP, port, _TcpStreamEnd(self._pipe, 0))
        except ConnectionError:
            transport.close()


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("duplicate-identifier check failed", exc_info=task.exception())
