"""Connected clients: the control connection's CONNECT, each client's yamux session, its
control stream, and the strictly-FIFO hand-out of the streams it opens for requests."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import SessionClosedError
from ..registry import UNREGISTERED, Registry
from ..yamux import Config, Session
from . import koding
from .http1 import RequestHead, error_response
from .ratelimit import TokenBuckets
from .splice import CloseAtOnce

if TYPE_CHECKING:
    from .peers import Peers

logger = logging.getLogger("ytun.server")

#: The Go client compares only the status line; the body is kept as the original has it.
REFUSED_RESPONSE = error_response(
    502, "no host associated for identifier. please use server.AddHost()"
)


TOO_MANY_REFUSALS = error_response(
    429, "too many unknown identifiers from this address; try again later", close=True
)


REFUSAL_REASONS = ("unknown_identifier", "rate_limited", "duplicate")


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


class StreamRequester(Protocol):
    """A protocol waiting for a tunnel stream: attached to it, or told why none came."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def tunnel_failed(self, message: str) -> None: ...


class ControlConnection(Protocol):
    """The public connection a CONNECT arrived on (the server's front door)."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def may_hand_off(self) -> bool:
        """False if the connection came from another worker (it moves at most once)."""
        ...

    @property
    def current_raw(self) -> bytes:
        """The CONNECT head as received."""
        ...

    def hand_over(self) -> None:
        """The connection went to another worker: forget it without ending it."""
        ...


class ClientLinks:
    """Every client connected to one server, by client key (the registry's digest of
    its identifier: the identifier itself is dropped once the CONNECT is checked).

    State is kept only for keys the registry knows, so refused CONNECTs with made-up
    identifiers cost nothing that stays.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        yamux_config: Config | None,
        stream_timeout: float,
        handshake_timeout: float,
        duplicate_ping_timeout: float,
        on_change: Callable[[ServerStateChange], None],
        on_client_leaving: Callable[[str], None],
        refusals: TokenBuckets,
        peers: Peers | None = None,
    ) -> None:
        self.registry = registry
        #: Other worker processes: a client is held by one process of the server.
        self.peers = peers
        self.yamux_config = yamux_config
        self.stream_timeout = stream_timeout
        self.handshake_timeout = handshake_timeout
        self.duplicate_ping_timeout = duplicate_ping_timeout
        self._on_change = on_change
        self._on_client_leaving = on_client_leaving
        self._links: dict[str, ClientLink] = {}
        self._states: dict[str, ServerState] = {}
        self.refused = 0
        #: Refused control connections by reason (``unknown_identifier``: answered 502,
        #: ``rate_limited``: that address is out of tokens, ``duplicate``: the identifier's
        #: client is connected and alive), for the metrics.
        self.refusals = dict.fromkeys(REFUSAL_REASONS, 0)
        #: Clients that connected again after their session ended.
        self.reconnects = 0
        self._refusals = refusals

    def __len__(self) -> int:
        return len(self._links)

    def __iter__(self) -> Any:
        return iter(list(self._links.values()))

    def get(self, key: str) -> ClientLink | None:
        """The connected client with client key ``key``, if any."""
        link = self._links.get(key)
        return link if link is not None and link.connected else None

    # -- the control path ----------------------------------------------------------------

    def connect(self, public: ControlConnection, head: RequestHead, extra: bytes) -> bytes | None:
        """A CONNECT on the control path. Returns the HTTP answer when it is refused (the
        connection stays an HTTP one), or None once the connection is taken: it belongs to
        a client, or it was closed."""
        transport = public.transport
        if transport is None:
            return None
        key = self.registry.owner(head.identifier.decode("latin-1"))
        if key is None:
            return self._refuse(transport)
        existing = self._links.get(key)
        if existing is None and self.peers is None:
            self._accept(key, transport, extra)
            return None
        transport.pause_reading()
        loop = asyncio.get_running_loop()
        if existing is None:  # this worker may hold it, or another one does
            assert self.peers is not None
            claiming = loop.create_task(self._claim(self.peers, public, key, extra))
            claiming.add_done_callback(_report)
            return None
        # Duplicate identifier: keep a live client, replace a dead one (no kick-both flapping).
        task = loop.create_task(self._resolve_duplicate(existing, key, transport, extra))
        task.add_done_callback(_report)
        return None

    async def _claim(self, peers: Peers, public: ControlConnection, key: str, extra: bytes) -> None:
        """Take the client in this worker, or give its control connection to the worker
        that holds the client: there the usual duplicate rule applies."""
        granted = await peers.claim(key)
        transport = public.transport
        if transport is None or transport.is_closing():
            if granted and key not in self._links:
                peers.release(key)
            return
        if granted:
            existing = self._links.get(key)
            if existing is None:
                transport.resume_reading()
                self._accept(key, transport, extra)
            else:  # a second CONNECT for it reached this worker meanwhile
                await self._resolve_duplicate(existing, key, transport, extra)
            return
        raw = public.current_raw
        if public.may_hand_off and peers.hand_off(key, "http", transport, raw + extra):
            public.hand_over()
            logger.debug("gave a control connection to the worker holding its client")
            return
        # Its holder went away as this connection came from it: the client retries.
        transport.write(error_response(502, "control conn already exist. \n", close=True))
        transport.close()

    def _refuse(self, transport: asyncio.Transport) -> bytes | None:
        """Answer an unknown identifier; an address that keeps guessing is cut off."""
        self.refused += 1
        self._notify(
            UNREGISTERED,
            ServerState.UNKNOWN,
            ServerState.CLOSED,
            ConnectionRefusedError("no host associated for identifier"),
        )
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else "-"
        if self._refusals.take(address):
            logger.warning(
                "refused a client from %s: unknown identifier (%d refused from there)",
                address,
                self._refusals.refused(address) + 1,
            )
            self.refusals["unknown_identifier"] += 1
            return REFUSED_RESPONSE
        self.refusals["rate_limited"] += 1
        # Out of tokens: answer once more and close, so each further guess costs a new
        # connection, at the bucket's rate. Not logged one by one (that would be a flood).
        transport.write(TOO_MANY_REFUSALS)
        transport.close()
        return None

    async def _resolve_duplicate(
        self, existing: ClientLink, key: str, transport: asyncio.Transport, extra: bytes
    ) -> None:
        try:
            await asyncio.wait_for(existing.session.ping(), self.duplicate_ping_timeout)
            alive = True
        except (asyncio.TimeoutError, SessionClosedError):
            alive = False
        if transport.is_closing():
            return
        if alive and self._links.get(key) is existing:
            logger.warning("refused a second client for %s: the first one is alive", existing.label)
            self.refusals["duplicate"] += 1
            transport.write(error_response(502, "control conn already exist. \n", close=True))
            transport.close()
            return
        if self._links.get(key) is existing:
            logger.warning("replacing the unresponsive client for %s", existing.label)
            existing.disconnect(SessionClosedError("replaced by a new connection"))
        transport.resume_reading()
        self._accept(key, transport, extra)

    def _accept(self, key: str, transport: asyncio.Transport, extra: bytes) -> None:
        transport.write(koding.CONNECTED_RESPONSE)
        link = ClientLink(self, key)
        self._links[key] = link
        link.start(transport, extra)

    # -- events from links ---------------------------------------------------------------

    def link_connected(self, link: ClientLink) -> None:
        logger.info("client for %s connected from %s", link.label, link.peer)
        if self._states.get(link.key) is ServerState.CLOSED:
            self.reconnects += 1
        self._set_state(link.key, ServerState.CONNECTED)

    def link_gone(self, link: ClientLink, error: BaseException | None) -> None:
        if self._links.get(link.key) is link:
            del self._links[link.key]
            if self.peers is not None:  # unless a replacement takes it in this same turn
                asyncio.get_running_loop().call_soon(self._release, link.key)
        logger.info("client for %s disconnected: %s", link.label, error)
        self._set_state(link.key, ServerState.CLOSED, error, link.label)

    def _release(self, key: str) -> None:
        if key not in self._links and self.peers is not None:
            self.peers.release(key)

    def client_leaving(self, link: ClientLink) -> None:
        self._on_client_leaving(link.key)

    def _set_state(
        self,
        key: str,
        state: ServerState,
        error: BaseException | None = None,
        label: str | None = None,
    ) -> None:
        previous = self._states.get(key, ServerState.UNKNOWN)
        if key in self._links or self.registry.has_key(key):
            self._states[key] = state
        else:
            self._states.pop(key, None)  # its routes are gone: forget it
        if label is None or self.registry.has_key(key):
            label = self.registry.label(key)
        self._notify(label, previous, state, error)

    def _notify(
        self,
        label: str,
        previous: ServerState,
        current: ServerState,
        error: BaseException | None,
    ) -> None:
        self._on_change(ServerStateChange(label, previous, current, error))

    def close_all(self, error: BaseException) -> None:
        for link in list(self._links.values()):
            link.disconnect(error)

    def go_away_all(self) -> None:
        for link in list(self._links.values()):
            link.session.go_away()


class ClientLink:
    """One connected client: its yamux session, control stream and stream waiters."""

    def __init__(self, links: ClientLinks, key: str) -> None:
        self._links = links
        #: The client key (a digest; the identifier is never kept).
        self.key = key
        self.label = links.registry.label(key)
        self.connected = False
        self.draining = False
        self.connected_at = 0.0
        self.peer: tuple[Any, ...] | None = None
        self.session: Session
        self._control: _ServerControl | None = None
        self._waiters: deque[_StreamWaiter] = deque()
        self._gone = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self, transport: asyncio.Transport, extra: bytes) -> None:
        self.peer = transport.get_extra_info("peername")
        self.session = Session(
            client=False,
            config=self._links.yamux_config,
            protocol_factory=self._next_protocol,
            on_remote_go_away=self._client_leaving,
        )
        self.session.take_over(transport, extra)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._links.handshake_timeout, self._handshake_timed_out)
        closed = loop.create_task(self.session.wait_closed())
        closed.add_done_callback(lambda _: self.disconnect(self.session.error))

    @property
    def streams(self) -> int:
        return self.session.stream_count

    def _client_leaving(self) -> None:
        """The client sent Go Away: new requests get 502, idle streams to it are ended."""
        self.draining = True
        self._links.client_leaving(self)

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
                return waiter.protocol  # type: ignore[return-value]
            return CloseAtOnce()  # the request timed out: its late stream is closed
        return CloseAtOnce()

    def request_stream(self, kind: int, port: int, protocol: StreamRequester) -> None:
        """Ask the client for a stream; ``protocol`` is attached to it when it arrives, or
        told ``tunnel_failed(message)``. Sending and queueing happen together."""
        if not self.connected or self._control is None or self.draining:
            raise ConnectionError("no client session established")
        waiter = _StreamWaiter(protocol)
        waiter.timer = asyncio.get_running_loop().call_later(
            self._links.stream_timeout, waiter.expire
        )
        self._control.send(koding.control_message(kind, port))
        self._waiters.append(waiter)

    def handshake_done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.connected = True
        self.connected_at = time.time()
        self._links.link_connected(self)

    def disconnect(self, error: BaseException | None) -> None:
        if self._gone:
            return
        self._gone = True
        self.connected = False
        if self._timer is not None:
            self._timer.cancel()
        self.session.close()
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.cancel_timer()
            if not waiter.expired:
                waiter.protocol.tunnel_failed("no client session established")
        self._links.link_gone(self, error)


class _StreamWaiter:
    __slots__ = ("protocol", "timer", "expired")

    def __init__(self, protocol: StreamRequester) -> None:
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
        if self._stream is None or self._stream.is_closing():
            raise ConnectionError("control stream closed")
        self._stream.write(message)

    def data_received(self, data: bytes) -> None:
        if not self._link.connected:
            self._buffer += data
            size = len(koding.HANDSHAKE_REQUEST)
            if not koding.HANDSHAKE_REQUEST.startswith(self._buffer[:size]):
                self._link.disconnect(ConnectionError("handshake aborted"))
                return
            if len(self._buffer) < size:
                return
            data, self._buffer = self._buffer[size:], b""
            if self._stream is not None:
                self._stream.write(koding.HANDSHAKE_RESPONSE)
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


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("duplicate-identifier check failed", exc_info=task.exception())
