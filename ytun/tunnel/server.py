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

from ..errors import HostTakenError, InvalidHostError, SessionClosedError
from ..registry import MemoryRegistry, Registry, Route
from ..registry.names import (
    normalize_host,
    normalize_name,
    normalize_subdomain,
    random_subdomain,
)
from ..yamux import Config
from . import koding
from .access import AccessLog, AccessLogSetting, open_access_log
from .connections import PublicConnections
from .events import StateFeed
from .front import HEAD_TIMEOUT, Network, PublicProtocol
from .http1 import MAX_HEAD_SIZE, RequestHead, error_response
from .limits import default_max_connections
from .links import ClientLink, ClientLinks, ServerState, ServerStateChange
from .observe import RequestObserver, combine
from .peers import ConnectionKind, Peers
from .ratelimit import TokenBuckets
from .splice import AnswerAndClose
from .tcp import TcpListeners
from .tls import TlsListener

logger = logging.getLogger("ytun.server")

AT_CAPACITY_ANSWER = error_response(503, "server at capacity, try again later", close=True)

#: Random subdomains tried before add_subdomain gives up (each is free with odds of about
#: 1 - hosts / 36**8, so a second try is already rare).
SUBDOMAIN_ATTEMPTS = 16

__all__ = ["ClientInfo", "Server", "ServerState", "ServerStateChange", "ServerStats"]


@dataclass(frozen=True)
class ClientInfo:
    """A connected client, labelled by one of its hosts (never by its identifier)."""

    label: str
    peer: tuple[Any, ...] | None
    connected_at: float
    streams: int
    #: Bytes of its tunnel connection (yamux frames): read from it, and written to it.
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(frozen=True)
class ServerStats:
    """Counts read at one moment (for the metrics; nothing here names a client)."""

    clients_connected: int  # clients past the handshake
    sessions: int  # yamux sessions, handshaking ones included
    open_streams: int  # yamux streams over every session (control streams included)
    refused: dict[str, int]  # refused control connections by reason
    reconnects: int  # clients that connected again after their session ended
    tcp_connections: int  # connections accepted on TCP tunnel listeners


#: A readiness check: None when fine, else why the server is not ready.
ReadinessCheck = Callable[[], "str | None"]


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
        domain: str | None = None,
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
        #: Who owns which route; the server keys its clients by the registry's client keys.
        self.registry = registry if registry is not None else MemoryRegistry()
        #: The wildcard domain (``*.domain`` points here): add_subdomain() hands out names
        #: under it, and names deeper than a registered subdomain route to its owner.
        self.domain = normalize_name(domain) if domain else None
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
        self._observers: list[RequestObserver] = []
        #: What the public side tells when each request ends: the access log and every
        #: observer added (see add_observer), as one; None when nobody listens.
        self.observer: RequestObserver | None = self.access_log
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
        self._tcp = TcpListeners(self.registry, self.link_for, self.observer, peers=peers)
        self._servers: list[asyncio.AbstractServer] = []
        self._readiness_checks: list[ReadinessCheck] = []
        # Another node may delete a client's last route: it must not stay connected here.
        self.registry.watch(self._disconnect_if_unrouted)

    # -- configuration -------------------------------------------------------------------

    def add_host(self, host: str, identifier: str | None = None, *, replace: bool = True) -> str:
        """Route requests whose Host is ``host`` (``name`` or ``name:port``) to the client
        with ``identifier``; a fresh one (``secrets.token_urlsafe(32)``) when None.
        Returns the identifier. Raises ``InvalidHostError`` for a bad name, and
        ``HostTakenError`` if ``replace`` is False and another client owns the host."""
        if identifier is None:
            identifier = secrets.token_urlsafe(32)
        self.registry.add_host(host, identifier, replace=replace)
        return identifier

    def add_subdomain(self, label: str | None = None) -> tuple[str, str]:
        """Register ``label.domain`` (a random free label when None) for a new client;
        returns ``(host, identifier)``. Raises ``InvalidHostError`` without a domain or
        for a bad label, ``HostTakenError`` if the label is taken."""
        if self.domain is None:
            raise InvalidHostError("subdomains need the server's domain (--domain)")
        if label is not None:
            host = f"{normalize_subdomain(label)}.{self.domain}"
            return host, self.add_host(host, replace=False)
        for _ in range(SUBDOMAIN_ATTEMPTS):
            host = f"{random_subdomain()}.{self.domain}"
            if self.registry.host_key(host) is None:
                return host, self.add_host(host, replace=False)
        raise HostTakenError(f"no free subdomain of {self.domain} found; try again")

    def delete_host(self, host: str) -> bool:
        """Stop routing ``host``; True if it was routed. Its client is disconnected when
        this was its last route (it could not be reached any more); a client with other
        routes stays connected for them."""
        try:
            name = normalize_host(host)
        except InvalidHostError:
            return False  # never stored
        key = self.registry.host_key(name)
        deleted = self.registry.delete_host(name)
        if key is not None:
            self._disconnect_if_unrouted(key)
        return deleted

    def hosts(self) -> list[Route]:
        """Every virtual host with its client's label (no identifiers, no keys)."""
        return self.registry.hosts()

    def tcp_routes(self) -> list[Route]:
        """Every TCP route with its client's label (no identifiers, no keys)."""
        return self.registry.tcp_routes()

    async def flush(self) -> None:
        """Wait until the registry has stored every change (see ``Registry.flush``)."""
        await self.registry.flush()

    def _disconnect_if_unrouted(self, key: str) -> None:
        if self.registry.has_key(key):
            return
        link = self._links.get(key)
        if link is not None:
            logger.info("disconnecting the client for %s: it has no route left", link.label)
            link.disconnect(SessionClosedError("its last route was deleted"))

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

    async def listen_stored_tcp(self, host: str = "") -> list[int]:
        """Listen on ``host`` for every stored port route that has no listener yet (routes
        kept in a state file across a restart, e.g. added with the admin API); returns the
        ports now listened on. A port that cannot be bound is logged and skipped."""
        ports = []
        for route in self.registry.tcp_routes():
            if route.kind != "tcp":
                continue
            port = int(route.name.lstrip(":"))
            if port in self._tcp.ports:
                continue
            try:
                await self._tcp.listen(host, port)
            except OSError as exc:
                logger.warning(
                    "cannot listen again on the stored TCP route %s of %s: %s",
                    route.name,
                    route.label,
                    exc.strerror or exc,
                )
                continue
            ports.append(port)
        return ports

    def delete_addr(self, port: int, *, ip: str | None = None) -> None:
        """Remove a TCP route; the listener closes when no port route is left on it.
        Connections already open carry on; the client is disconnected if this was its
        last route."""
        key = self.registry.lookup_addr(ip if ip is not None else "", port)
        self._tcp.delete(port, ip)
        if key is not None:
            self._disconnect_if_unrouted(key)

    # -- observing -----------------------------------------------------------------------

    def state_changes(self) -> AsyncIterator[ServerStateChange]:
        """Every client state change from this call on, until the iterator is closed."""
        return self._states.subscribe()

    @property
    def clients(self) -> list[ClientInfo]:
        """The connected clients (labelled by host, never by identifier)."""
        return [
            ClientInfo(
                link.label,
                link.peer,
                link.connected_at,
                link.streams,
                link.session.bytes_in,
                link.session.bytes_out,
            )
            for link in self._links
            if link.connected
        ]

    def add_observer(self, observer: RequestObserver) -> None:
        """Tell ``observer`` (e.g. the metrics) about every request, switched connection
        and TCP tunnel connection when it ends, besides the access log. Connections
        accepted from now on are observed."""
        self._observers.append(observer)
        self.observer = combine(self.access_log, *self._observers)
        self._tcp.observer = self.observer

    def stats(self) -> ServerStats:
        """Clients, sessions, streams and control-path counts, read now."""
        links = list(self._links)
        return ServerStats(
            clients_connected=sum(1 for link in links if link.connected),
            sessions=len(links),
            open_streams=sum(link.streams for link in links if link.connected),
            refused=dict(self._links.refusals),
            reconnects=self._links.reconnects,
            tcp_connections=self._tcp.accepted,
        )

    @property
    def listening(self) -> bool:
        """True while one of the server's listeners accepts connections."""
        return any(listener.is_serving() for listener in self._servers)

    def add_readiness_check(self, check: ReadinessCheck) -> None:
        """Make ``check`` part of :meth:`readiness` (e.g. a shared store's connection)."""
        self._readiness_checks.append(check)

    def readiness(self) -> list[str]:
        """Why the server cannot serve now: empty when it is ready (listening, its
        registry usable, every added check passing)."""
        reasons = []
        if not self.listening:
            reasons.append("not listening")
        problem = self.registry.problem()
        if problem is not None:
            reasons.append(f"registry: {problem}")
        for check in self._readiness_checks:
            try:
                problem = check()
            except Exception as exc:  # a broken check is a reason, not a crash
                problem = f"readiness check failed: {type(exc).__name__}"
            if problem is not None:
                reasons.append(problem)
        return reasons

    def ready(self) -> bool:
        """True when :meth:`readiness` finds nothing wrong."""
        return not self.readiness()

    @property
    def in_flight(self) -> int:
        """Public connections with a request still waiting for its answer."""
        return self._public.in_flight

    def is_connected(self, identifier: str) -> bool:
        """True if the client with ``identifier`` is connected."""
        return self._links.get(self.registry.key_for(identifier)) is not None

    # -- the front door's port (what PublicProtocol may use) -----------------------------

    def lookup_host(self, host: str) -> str | None:
        """The client key for a Host header value (with this server's wildcard domain)."""
        return self.registry.lookup_host(host, self.domain)

    def link_for(self, key: str) -> ClientLink | None:
        """The connected client with client key ``key`` (``registry.key_for``), if any."""
        return self._links.get(key)

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

    def adopt_hop(
        self,
        transport: asyncio.Transport,
        kind: ConnectionKind,
        data: bytes,
        *,
        key: str,
        port: int,
        peer: str,
        scheme: bytes,
    ) -> None:
        """Serve a connection that another node accepted and forwards over ``transport``
        (``data`` is what came after the hop's first line). Its requests are answered
        here, never forwarded again: a request for a client this node does not hold gets
        the answer of a client that is not connected."""
        protocol: asyncio.Protocol
        if kind == "tcp":
            protocol = self._tcp.hopped_protocol(key, port, peer)
        elif self._held() >= self.max_connections:
            protocol = self.protocol_factory()  # the at-capacity answer
        else:
            protocol = PublicProtocol(
                self,
                head_timeout=self.head_timeout,
                handed_in=data,
                peer=peer,
                scheme=scheme,
                hand_offs=False,
            )
            data = b""
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)

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
