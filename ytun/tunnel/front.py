"""The server's public side: one protocol per public HTTP connection.

:class:`PublicProtocol` is routing plus I/O on top of a
:class:`~ytun.tunnel.split.RequestSplitter`: each request is routed by its own Host, and
the bytes received are forwarded as they are (plus forwarding headers) down a tunnel
stream. Consecutive requests for the same client, protocol and port share one stream.
:class:`ResponseRelay` is the other direction of that stream: answers are relayed as they
arrive, and a :class:`~ytun.tunnel.split.ResponseSplitter` says where each one ends.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import posixpath
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from . import koding
from .addr import split_host_port
from .http1 import HttpError, RequestHead, error_response, go_quote, rewrite_forwarding
from .observe import RequestObserver
from .split import END, NEED_DATA, PAUSED, Body, Head, Raw, RequestSplitter, ResponseSplitter

if TYPE_CHECKING:
    from .links import StreamRequester
    from .peers import Peers


class Link(Protocol):
    """A connected client, as the public side sees it."""

    def request_stream(self, kind: int, port: int, protocol: StreamRequester) -> None: ...


class Gateway(Protocol):
    """The public side's narrow port to the server: nothing else of it is used here."""

    forwarded_headers: bool
    max_head_size: int
    #: Peers whose forwarding headers are kept (and appended to), e.g. a load balancer.
    trust_forwarded: tuple[Network, ...]
    #: This server's Via received-by (``ytun-<random>``): a request that carries it came
    #: back to the server it left.
    via_mark: bytes
    #: Told about each request when it ends (the access log, the metrics), or None.
    observer: RequestObserver | None
    #: Clients whose requests were seen coming back (reported once each).
    loops_reported: set[str]
    #: The other processes of this server (``--workers``), or None alone.
    peers: Peers | None

    def lookup_host(self, host: str) -> str | None: ...

    def link_for(self, key: str) -> Link | None: ...

    def control_connect(
        self, public: PublicProtocol, head: RequestHead, extra: bytes
    ) -> bytes | None: ...

    def opened(self, public: PublicProtocol) -> None: ...

    def closed(self, public: PublicProtocol) -> None: ...


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

logger = logging.getLogger("ytun.server")

#: The body of the answer to a request that came back to the server it left.
LOOP_MESSAGE = (
    "this request came back to the tunnel server: the client forwards it to the server "
    "itself; give the client --local HOST:PORT of your app"
)

#: Seconds a request head (the first one counted from the connection's start, later ones
#: from their first byte) may take to arrive in full.
HEAD_TIMEOUT = 10.0
_EARLY_LIMIT = 1024 * 1024
#: Requests a relay may send again on a fresh stream when the origin closed a keep-alive
#: connection under them: the methods Go's Transport also retries, bytes held up to this.
_REPLAYABLE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
_REPLAY_LIMIT = 64 * 1024
#: Seconds between looks at a connection waiting to be handed to another worker.
_HAND_OFF_RETRY = 0.005

RouteKey = tuple[str, int, int]  # client key, koding protocol, port


def is_control_path(target: bytes) -> bool:
    if b"_controlPath" not in target:
        return False
    if not target.startswith(b"/"):  # absolute-form: Go matches the URL's path
        _scheme, sep, rest = target.partition(b"://")
        if not sep:
            return False
        target = b"/" + rest.partition(b"/")[2]
    path = target.split(b"?", 1)[0].decode("latin-1")
    return path.startswith("/") and posixpath.normpath(path).lstrip("/") == "_controlPath"


def peer_trusted(address: str, networks: Sequence[Network]) -> bool:
    """Whether ``address`` (an IP, maybe IPv4-mapped IPv6) is in one of ``networks``."""
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


class PublicProtocol(asyncio.Protocol):
    """One public connection on the server's listener."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        head_timeout: float = HEAD_TIMEOUT,
        handed_in: bytes | None = None,
        peer: str | None = None,
        scheme: bytes | None = None,
        hand_offs: bool = True,
    ) -> None:
        self._gateway = gateway
        # A connection another worker handed over, with the bytes it had read: they are
        # acted on first. Its first request is answered here, never handed on again (a
        # request moves between processes at most once).
        self._handed_in = handed_in
        # False for a connection that came from another node: none of its requests moves
        # on again, so a request crosses one hop at most and never loops.
        self._hand_offs = hand_offs
        self._may_hand_off = handed_in is None and hand_offs
        # The public client's address and scheme when this connection is a hop from the
        # node that accepted it (its own peer is that node).
        self._peer_given = peer
        self._scheme_given = scheme
        self._body_taken = 0  # bytes of the current request's body already accounted for
        # The last Host routed on this connection, decoded and split once.
        self._host_seen = b""
        self._host_parsed: tuple[str, int] = ("", 0)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._splitter = RequestSplitter(gateway.max_head_size)
        self._relay: ResponseRelay | None = None
        self._sink: ResponseRelay | None = None  # where the current request's body goes
        self._waiting: Head | None = None  # a request held until earlier answers are out
        self._upgrading: ResponseRelay | None = None  # it answers an upgrade request
        self._upgrade_verdict: bool | None = None  # that answer, before the splitter paused
        self._stopped = False  # no more requests are read (taken over, failed, closed)
        self._failure: bytes | None = None  # an error answer waiting for answers in flight
        self._pause_reasons: set[str] = set()
        self._writing_paused = False
        self._scheme = b"http"
        self._forwarded = b""  # our X-Forwarded-* fields up to the Host value
        self._via_end = b""  # our Via field and the head's end
        self._trusted = False  # the peer's own forwarding fields are kept
        self._peer = "-"
        self._observer = gateway.observer
        self._head_received = 0.0  # time.monotonic() of the current head, for the log
        self._head_size = 0  # bytes of the current head as received, for the observer
        self.activity = 0  # reads so far, for the idle policy
        self._eof = False  # the client half-closed: close once every answer is out
        self._current_raw = b""

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._gateway.opened(self)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else "-"
        known = isinstance(peer, tuple)
        if self._peer_given is not None:
            self._peer, known = self._peer_given, self._peer_given != "-"
        gateway = self._gateway
        if gateway.forwarded_headers:
            self._scheme = b"https" if transport.get_extra_info("sslcontext") else b"http"
            if self._scheme_given is not None:
                self._scheme = self._scheme_given
            address = self._peer.encode() if known else b""
            self._forwarded = (
                b"X-Forwarded-For: "
                + address
                + b"\r\nX-Forwarded-Proto: "
                + self._scheme
                + b"\r\nX-Forwarded-Host: "
            )
            self._via_end = b"\r\nVia: 1.1 " + gateway.via_mark + b"\r\n\r\n"
            self._trusted = peer_trusted(self._peer, gateway.trust_forwarded)
        self._arm_head_timer()
        if self._handed_in:
            data, self._handed_in = self._handed_in, None
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stopped = True
        self._transport = None
        self._cancel_head_timer()
        self._gateway.closed(self)
        relay = self._relay
        if relay is not None:
            self._relay = None
            relay.abandon()

    def eof_received(self) -> bool:
        if self._splitter.upgraded and self._relay is not None:
            self._relay.send_eof()
            return True
        # Keep the connection open while answers to requests already sent go out.
        self._eof = True
        return self._relay is not None and self._relay.busy

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._relay is not None:
            self._relay.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._relay is not None:
            self._relay.resume_reading()

    def pause(self, reason: str) -> None:
        if not self._pause_reasons and self._transport is not None:
            self._transport.pause_reading()
        self._pause_reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._pause_reasons:
            self._pause_reasons.discard(reason)
            if not self._pause_reasons and self._transport is not None:
                self._transport.resume_reading()

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    @property
    def peer(self) -> str:
        """The client's IP address, for the logs."""
        return self._peer

    @property
    def observer(self) -> RequestObserver | None:
        return self._observer

    @property
    def max_head_size(self) -> int:
        return self._gateway.max_head_size

    @property
    def idle(self) -> bool:
        """No request in flight (used by a graceful server close)."""
        return self._relay is None or not self._relay.busy

    def close(self) -> None:
        # never twice: a second close() of an asyncio SSL transport breaks later writes
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # -- the header timeout --------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self._transport is not None:
            self._head_timer = asyncio.get_running_loop().call_later(
                self._head_timeout, self._head_timed_out
            )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self._transport
        if transport is None or self._stopped:
            return
        if not self.idle:
            self._arm_head_timer()  # answers are going out: the head's turn comes after
            return
        logger.debug("%s: request head not complete in %.3gs", self.peer, self._head_timeout)
        self._stopped = True
        answer = error_response(408, "request header timeout", close=True)
        if self._observer is not None:
            self._observer.request(
                self._peer, b"", b"-", b"-", 408, len(answer), 0, time.monotonic()
            )
        transport.write(answer)
        transport.close()

    # -- requests ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.activity += 1
        self._splitter.receive(data)
        self._pump()

    def _pump(self) -> None:
        """Act on every request event the bytes received so far make up."""
        splitter = self._splitter
        try:
            relay = self._relay
            if (
                (relay is None or not relay.busy)
                and self._waiting is None
                and not self._stopped
                and (self._gateway.peers is None or not self._transport.get_write_buffer_size())  # type: ignore[union-attr]
            ):
                # The common case first, in one step: a whole ordinary request at the start
                # of the bytes, with nothing in flight before it (so it never waits).
                whole = splitter.whole_message()
                if whole is not None:
                    self._whole_request(whole)
            while self._waiting is None and not self._stopped:
                event = splitter.next_event()
                if type(event) is Body:
                    if self._sink is not None:
                        self._sink.send_body(event.payload())
                elif event is NEED_DATA:
                    break
                elif event is END:
                    self._sink = None
                    if splitter.closed:
                        self._close_if_done()
                elif type(event) is Head:
                    if self._observer is not None:
                        self._head_received = time.monotonic()
                    if not self._start_request(event):
                        self._waiting = event
                        self.pause("wait")
                elif type(event) is Raw:
                    self._relay.send_raw(event.payload())  # type: ignore[union-attr]
                elif event is PAUSED and not self._upgrade_paused():
                    break
        except HttpError as exc:
            self._bad_request(exc)
        if splitter.head_pending and not self._stopped:
            self._arm_head_timer()
        elif self._head_timer is not None:
            self._cancel_head_timer()

    def _whole_request(self, event: Head) -> None:
        """A request and all of its body, as the events Head, Body and END would give."""
        if self._observer is not None:
            self._head_received = time.monotonic()
        length = event.head.content_length
        self._body_taken = length or 0
        started = self._start_request(event)
        self._body_taken = 0
        if self._stopped and self._transport is None:
            return  # handed to another worker
        assert started, "a request with nothing before it never waits"
        if length and self._sink is not None:
            stop = self._splitter.position
            self._sink.send_body(self._splitter.received[stop - length : stop])
        self._sink = None
        if self._splitter.closed:
            self._close_if_done()

    def _upgrade_paused(self) -> bool:
        """The splitter waits for the answer to an upgrade request: True if it is known
        (reading goes on), False if reading pauses until it comes."""
        verdict = self._upgrade_verdict
        if self._upgrading is not None and verdict is None:
            self.pause("upgrade")
            return False
        self._upgrade_verdict = None
        self._upgrading = None
        if verdict:
            self._splitter.upgrade_accepted()
        else:  # refused, or answered here: the next bytes are requests again
            self._splitter.upgrade_refused()
        return True

    def upgrade_answered(self, relay: ResponseRelay, switched: bool) -> None:
        """The answer to the upgrade request sent down ``relay`` has begun."""
        if relay is not self._upgrading:
            return
        self._upgrade_verdict = switched
        if self._splitter.paused:
            self.resume("upgrade")
            self._pump()

    def _route(self, head: RequestHead) -> tuple[str, int, int] | tuple[None, int, str]:
        """``(client key, protocol, port)``, or ``(None, status, message)`` for an error."""
        if not head.host:
            return None, 502, "request host is empty"
        if head.host == self._host_seen:  # keep-alive: the same Host again
            host, port = self._host_parsed
        else:
            host = head.host.decode("latin-1").lower()
            port = split_host_port(host)[1]
            self._host_seen, self._host_parsed = head.host, (host, port)
        client = self._gateway.lookup_host(host)  # every time: routes may change
        if client is None:
            return None, 502, f"no virtual host available for {go_quote(host)}"
        return client, koding.WS if head.websocket else koding.HTTP, port

    def _start_request(self, event: Head) -> bool:
        """Route and forward one request; False if it must wait for earlier answers."""
        head: RequestHead = event.head  # type: ignore[assignment]
        self._head_size = len(event.raw)
        relay = self._relay
        if is_control_path(head.target):
            self._current_raw = event.raw
            if relay is not None and relay.busy:
                return False
            if head.method != b"CONNECT":
                self._answer(head, 405, "405 must CONNECT\n")
                return True
            self._connect(head)
            return True
        client, kind, port = self._route(head)
        if (
            client is not None
            and self._gateway.peers is not None
            and self._gateway.link_for(client) is None
        ):
            if relay is not None and relay.busy:
                return False  # earlier answers first
            handed = self._hand_off(client, event)
            if handed is None:
                return False  # our last answer is still being written: soon
            if handed:
                return True
        raw = event.raw
        looped = False
        if self._forwarded:
            lowered = raw.lower()
            if b"forwarded" in lowered or b"\nvia:" in lowered:
                raw, looped = rewrite_forwarding(
                    raw,
                    peer=self._peer.encode(),
                    scheme=self._scheme,
                    host=head.host,
                    via_mark=self._gateway.via_mark,
                    trusted=self._trusted,
                )
            else:  # the common case: append ours
                raw = b"".join((raw[:-2], self._forwarded, head.host, self._via_end))
        if (
            relay is not None
            and relay.busy
            and (client is None or looped or relay.key != (client, kind, port))
        ):
            return False
        if client is None:
            self._answer(head, kind, port)  # type: ignore[arg-type]
            return True
        if looped:
            self._loop_detected(head, client)
            return True
        key = (client, kind, port)
        if relay is not None and (relay.key != key or relay.closed):
            relay.finish()
            self._relay = relay = None
        if relay is None:
            relay = self._open_relay(key)  # type: ignore[arg-type]
            if relay is None:
                self._answer(head, 502, "no client session established")
                return True
        relay.send_request(raw, head, self._head_received, self._head_size)
        self._sink = relay
        self._may_hand_off = self._hand_offs
        if head.upgrade or head.method == b"CONNECT":
            self._upgrading = relay
        return True

    def _hand_off(self, key: str, event: Head) -> bool | None:
        """Give the connection to the worker that holds the client, with this request's
        bytes and any after it. True once it is gone; False to answer here; None to try
        again in a moment (the end of an earlier answer is still ours to write)."""
        peers = self._gateway.peers
        transport = self._transport
        if peers is None or transport is None or not self._hand_offs:
            return False  # alone, closed, or it came by a hop from another node: stays here
        if not self._may_hand_off:  # it was just handed here: answered here, the next may move
            self._may_hand_off = True
            return False
        if transport.get_write_buffer_size():
            if self._body_taken:
                return False  # never happens: the one-step path waits for the buffer
            asyncio.get_running_loop().call_later(_HAND_OFF_RETRY, self._retry_waiting)
            return None
        splitter = self._splitter
        data = event.raw + splitter.received[splitter.position - self._body_taken :]
        if not peers.hand_off(key, "http", transport, data):
            return False
        self.hand_over()
        return True

    def _retry_waiting(self) -> None:
        if self._waiting is None or self._stopped or self._transport is None:
            return
        if self._start_waiting() and not self._stopped:
            self.resume("wait")
            self._pump()

    def _start_waiting(self) -> bool:
        """Send the request that waited (for its stream, or for a hand-off); False when
        it still cannot go, or was answered with an error."""
        waiting = self._waiting
        assert waiting is not None
        self._waiting = None
        try:
            started = self._start_request(waiting)
        except HttpError as exc:
            self._bad_request(exc)
            return False
        if not started:
            self._waiting = waiting
        return started

    def hand_over(self) -> None:
        """The connection went to another worker: forget it without ending it (the
        other worker holds a duplicate of the socket)."""
        self._stopped = True
        self._cancel_head_timer()
        self._waiting = None
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.finish()
        transport, self._transport = self._transport, None
        if transport is not None:
            if transport.get_protocol() is self:
                transport.abort()  # a duplicate of the socket lives in the other worker
            else:  # carried on by another protocol here (a hop to another node)
                self._gateway.closed(self)

    @property
    def may_hand_off(self) -> bool:
        """False for a connection another worker handed over: its request stays here."""
        return self._may_hand_off

    @property
    def current_raw(self) -> bytes:
        """The head of the request being started (for handing a CONNECT over)."""
        return self._current_raw

    def _open_relay(self, key: RouteKey) -> ResponseRelay | None:
        link = self._gateway.link_for(key[0])
        if link is None:
            return None
        relay = ResponseRelay(self, key)
        try:
            link.request_stream(key[1], key[2], relay)
        except ConnectionError:
            return None
        self._relay = relay
        if self._writing_paused:
            relay.pause_reading()
        return relay

    def _loop_detected(self, head: RequestHead, client: str) -> None:
        """The request carries this server's own Via mark: the client sent it back here
        (its local address is this server). Answered 508 rather than sent round again."""
        reported = self._gateway.loops_reported
        if client not in reported:
            reported.add(client)  # once per client: a loop repeats with every request
            logger.warning(
                "requests for %s come back to this server through its client: the client "
                "forwards them to the server itself (give it --local HOST:PORT of the app); "
                "they are answered 508",
                go_quote(head.host.decode("latin-1").lower()),
            )
        self._answer(head, 508, LOOP_MESSAGE)

    def _connect(self, head: RequestHead) -> None:
        """A CONNECT on the control path: the connection becomes a client's, or the
        refusal is answered and requests are read again."""
        if head.chunked or head.content_length:
            raise HttpError(400, "CONNECT with a body")
        if self._splitter.next_event() is not END or self._splitter.next_event() is not PAUSED:
            raise AssertionError("a CONNECT without a body ends at its head")
        answer = self._gateway.control_connect(self, head, self._splitter.unconsumed())
        if answer is None:  # a client owns the connection now
            self._stopped = True
            self._cancel_head_timer()
            return
        if self._transport is not None:
            self._transport.write(answer)
        self._splitter.upgrade_refused()

    def _answer(self, head: RequestHead, status: int, message: str) -> None:
        """Answer a request ourselves, in order; its body is read and dropped."""
        close = not head.keep_alive
        version = "1.0" if head.version == "1.0" else "1.1"
        answer = error_response(status, message, close=close, version=version)
        if self._observer is not None:
            self._observer.request(
                self._peer,
                head.host,
                head.method,
                head.target,
                status,
                len(answer),
                self._head_size + (head.content_length or 0),  # the body is read and dropped
                self._head_received,
            )
        transport = self._transport
        if transport is None:
            return
        transport.write(answer)
        if close:
            self._stopped = True
            transport.close()

    def _bad_request(self, exc: HttpError) -> None:
        """The request bytes cannot be read on: answer the error once the answers in
        flight are out (or at once), then close."""
        self._stopped = True
        logger.info("%s: bad request (%d %s)", self.peer, exc.status, exc)
        transport = self._transport
        if transport is None:
            return
        relay = self._relay
        sink, self._sink = self._sink, None
        if sink is not None and relay is not None:
            # A request half forwarded: the origin would wait for the rest forever.
            self._relay = None
            if relay.pending == 1 and not relay.answer_started:
                relay.abandon()
            else:  # earlier answers are still coming: no room for ours in between
                relay.abandon()
                transport.close()
                return
        self._failure = error_response(exc.status, str(exc), close=True)
        if self._observer is not None:
            self._observer.request(
                self._peer, b"", b"-", b"-", exc.status, len(self._failure), 0, time.monotonic()
            )
        self.pause("failed")
        if self.idle:
            self._send_failure()

    def _send_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None and self._transport is not None:
            self._transport.write(failure)
            self._transport.close()

    def _close_if_done(self) -> None:
        """The client sent its last request (or half-closed): close once it has every
        answer."""
        if self.idle and self._waiting is None:
            self.close()

    # -- events from the tunnel ----------------------------------------------------------

    def client_leaving(self, client: str) -> None:
        """That client (by key) is shutting down: end our stream to it once its answers
        are out."""
        relay = self._relay
        if relay is not None and relay.key[0] == client:
            relay.draining = True
            if not relay.busy:
                self._relay = None
                relay.finish()

    def tunnel_idle(self, relay: ResponseRelay) -> None:
        """Every request sent down ``relay`` has its full answer: waiting requests go on."""
        if relay is not self._relay:
            return
        if relay.draining:
            self._relay = None
            relay.finish()
        if self._failure is not None:
            self._send_failure()
            return
        if self._waiting is not None:
            if not self._start_waiting():
                return
            self.resume("wait")
            self._pump()
        if (self._eof or self._splitter.closed) and self.idle and self._waiting is None:
            self.close()  # the client sent its last request and has every answer

    def tunnel_closed(
        self,
        relay: ResponseRelay,
        status: int,
        message: str | None,
        unanswered: _Sent | None = None,
    ) -> None:
        """``relay`` ended with answers missing: answer what can be (``unanswered`` is the
        request the error answers, for the log), then close."""
        if relay is not self._relay:
            return
        self._relay = None
        self._stopped = True
        transport = self._transport
        if transport is None:
            return
        if message is not None:
            answer = error_response(status, message, close=True)
            if self._observer is not None and unanswered is not None:
                head = unanswered.head
                self._observer.request(
                    self._peer,
                    head.host,
                    head.method,
                    head.target,
                    status,
                    len(answer),
                    unanswered.received,
                    unanswered.started,
                )
            transport.write(answer)
        transport.close()

    def relays_to(self, relay: ResponseRelay) -> bool:
        return relay is self._relay

    def resendable(self, relay: ResponseRelay) -> bool:
        return relay is self._relay and not self._stopped and self._upgrading is not relay

    def resend(self, relay: ResponseRelay, requests: list[_Sent]) -> None:
        """The origin closed ``relay``'s stream under requests it never read: send them
        again, in order, on a fresh stream."""
        if relay is not self._relay:
            return
        self._relay = None
        fresh = self._open_relay(relay.key)
        if fresh is None:
            self._relay = relay
            self.tunnel_closed(relay, 502, "no client session established", requests[0])
            return
        requests[0].resent = True
        for sent in requests:
            fresh.send_again(sent)
        if self._sink is relay:
            self._sink = fresh


class _Sent:
    """A request sent down a stream, kept until its answer ends: for the observer,
    and its bytes while it may have to be sent again."""

    __slots__ = ("head", "data", "size", "resent", "started", "received")

    def __init__(self, head: RequestHead, raw: bytes, started: float, received: int) -> None:
        self.head = head
        self.started = started  # time.monotonic() at its head (0 without an observer)
        self.received = received  # bytes from the public client: its head as received, body
        replayable = head.method in _REPLAYABLE_METHODS and not head.upgrade
        self.data: list[bytes] | None = [raw] if replayable else None
        self.size = len(raw)
        self.resent = False

    def keep(self, data: bytes) -> None:
        self.received += len(data)
        if self.data is not None:
            self.size += len(data)
            if self.size > _REPLAY_LIMIT:
                self.data = None
            else:
                self.data.append(data)


class ResponseRelay(asyncio.Protocol):
    """The response side of one tunnel stream: relays answers to the public connection."""

    def __init__(self, public: PublicProtocol, key: RouteKey) -> None:
        self.key = key
        self.closed = False
        self.draining = False  # its client is leaving: no requests after the current ones
        self._public = public
        self._stream: asyncio.Transport | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._reading_paused = False
        self._splitter = ResponseSplitter(public.max_head_size)
        self._requests: deque[_Sent] = deque()  # sent, their answers not complete
        self._raw = False
        self.answer_started = False  # bytes of the current answer were already relayed
        self._answers = 0  # answers complete on this stream
        self._close_after = False
        self._observer = public.observer
        self._status = 0  # of the answer in progress
        self._sent_bytes = 0  # relayed to the public client so far
        self._answer_mark = 0  # _sent_bytes when the answer in progress began
        self._upgrade: _Sent | None = None  # a switched request, logged when it ends
        self._raw_received = 0  # bytes from the public client after the switch

    @property
    def busy(self) -> bool:
        return bool(self._requests) or self._raw

    @property
    def pending(self) -> int:
        """Requests sent whose answer is not complete."""
        return len(self._requests)

    # -- requests going out --------------------------------------------------------------

    def send_request(
        self, data: bytes, head: RequestHead, started: float = 0.0, received: int = 0
    ) -> None:
        self._requests.append(_Sent(head, data, started, received or len(data)))
        self._splitter.expect(head)
        self.send(data)

    def send_again(self, sent: _Sent) -> None:
        self._requests.append(sent)
        self._splitter.expect(sent.head)
        for data in sent.data or ():
            self.send(data)

    def send_body(self, data: bytes) -> None:
        if self._requests:
            self._requests[-1].keep(data)
        self.send(data)

    def send_raw(self, data: bytes) -> None:
        """Bytes from the public client after protocols switched."""
        self._raw_received += len(data)
        self.send(data)

    def send(self, data: bytes) -> None:
        stream = self._stream
        if stream is not None:
            stream.write(data)
        elif not self.closed:
            self._early.append(data)
            self._early_size += len(data)
            if self._early_size > _EARLY_LIMIT:
                self._public.pause("attach")

    def send_eof(self) -> None:
        if self._stream is not None:
            self._stream.write_eof()
        else:
            self._early.append(b"")

    def pause_reading(self) -> None:
        self._reading_paused = True
        if self._stream is not None:
            self._stream.pause_reading()

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self._stream is not None:
            self._stream.resume_reading()

    def finish(self) -> None:
        """No more requests will use this stream (it is idle)."""
        self.closed = True
        if self._stream is not None:
            self._stream.close()

    def abandon(self) -> None:
        """The public side is gone: drop the stream, resetting it if answers are pending."""
        self.closed = True
        self._log_upgrade_end()
        stream = self._stream
        if stream is not None:
            if self.busy:
                stream.abort()
            else:
                stream.close()

    def tunnel_failed(self, message: str) -> None:
        """No stream arrived (timeout, or the client went away)."""
        self.closed = True
        first = self._requests[0] if self._requests else None
        self._public.tunnel_closed(self, 502, message, first)

    # -- the stream ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream: asyncio.Transport = transport  # type: ignore[assignment]
        if self.closed:
            stream.abort() if self.busy else stream.close()
            return
        self._stream = stream
        if self._reading_paused:
            stream.pause_reading()
        for data in self._early:
            if data:
                stream.write(data)
            else:
                stream.write_eof()
        self._early = []
        self._public.resume("attach")

    def pause_writing(self) -> None:
        self._public.pause("tunnel")

    def resume_writing(self) -> None:
        self._public.resume("tunnel")

    def data_received(self, data: bytes) -> None:
        public = self._public.transport
        if public is None or not self._public.relays_to(self):
            return  # dropped (reset, or replaced when idle): nothing of it is relayed
        if self._raw:
            self._sent_bytes += len(data)
            public.write(data)
            return
        splitter = self._splitter
        splitter.receive(data)
        # Bytes are relayed as received, in as few writes as possible: up to each point
        # where the public side may write on its own (an answer complete, an upgrade).
        relayed = 0
        # The common case first, in one step: an ordinary answer, whole, at the start.
        whole = splitter.whole_message()
        if whole is not None:
            self.answer_started = True
            self._answer_head(whole)  # ordinary: never an upgrade's answer
            relayed = self._relay(public, data, 0)
            if not self._answer_done():
                return
            if relayed == len(data):
                return
        try:
            while True:
                event = splitter.next_event()
                if type(event) is Body or type(event) is Raw:
                    continue
                if event is NEED_DATA:
                    break
                if type(event) is Head:
                    self.answer_started = True
                    if self._answer_head(event):
                        relayed = self._relay(public, data, relayed)
                        self._public.upgrade_answered(self, self._raw)
                elif event is END:
                    relayed = self._relay(public, data, relayed)
                    if not self._answer_done():
                        return
        except HttpError as exc:
            self._relay(public, data, relayed)
            self._malformed(exc)
            return
        self._relay(public, data, relayed)

    def _relay(self, public: asyncio.Transport, data: bytes, start: int) -> int:
        stop = self._splitter.position
        if stop > start:
            self._sent_bytes += stop - start
            public.write(data if start == 0 and stop == len(data) else data[start:stop])
        return stop

    def _answer_head(self, event: Head) -> bool:
        """Log a final answer; True if it answers an upgrade request (the public side
        waits to know whether protocols switched)."""
        head = event.head
        request: RequestHead = event.request  # type: ignore[assignment]
        status = head.status  # type: ignore[union-attr]
        if 100 <= status < 200 and status != 101:
            return False  # interim answer; the final one follows
        self._status = status
        if head.switched:  # type: ignore[union-attr]
            self._raw = True
            if self._observer is not None and self._requests:
                sent = self._upgrade = self._requests[0]
                self._observer.request(
                    self._public.peer,
                    request.host,
                    request.method,
                    request.target,
                    status,
                    self._sent_bytes - self._answer_mark + len(event.raw),
                    sent.received,
                    sent.started,
                )
            self._requests.clear()
            return True
        self._close_after = head.close  # type: ignore[union-attr]
        return request.upgrade or request.method == b"CONNECT"

    def _answer_done(self) -> bool:
        """An answer is complete; False if the stream is done with."""
        self.answer_started = False
        self._answers += 1
        sent = self._requests.popleft()
        if self._observer is not None:
            self._log_answer(sent)
        self._answer_mark = self._sent_bytes
        if self._close_after:
            self.closed = True
            self._requests.clear()
            if self._stream is not None:
                self._stream.close()
            self._public.tunnel_closed(self, 0, None)
            return False
        if not self._requests:
            self._public.tunnel_idle(self)
        return True

    def _log_answer(self, sent: _Sent) -> None:
        """An answer relayed (in full, or cut short)."""
        head = sent.head
        self._observer.request(  # type: ignore[union-attr]
            self._public.peer,
            head.host,
            head.method,
            head.target,
            self._status,
            self._sent_bytes - self._answer_mark,
            sent.received,
            sent.started,
        )

    def _log_upgrade_end(self) -> None:
        sent, self._upgrade = self._upgrade, None
        if sent is not None and self._observer is not None:
            head = sent.head
            self._observer.upgrade_end(
                self._public.peer,
                head.host,
                head.method,
                head.target,
                self._status,
                self._sent_bytes - self._answer_mark,
                self._raw_received,
                sent.started,
            )

    def _malformed(self, exc: HttpError) -> None:
        """The answer cannot be delimited: nothing after it can be trusted."""
        self.closed = True
        if self._stream is not None:
            self._stream.abort()
        if not self._requests:
            return  # bytes nobody asked for: this stream is dropped, the next gets a new one
        request = self._requests[0].head
        logger.warning(
            "malformed answer from the tunnel to %s %s (host %s): %s",
            request.method.decode("latin-1"),
            request.target.decode("latin-1"),
            request.host.decode("latin-1"),
            exc,
        )
        first = self._requests[0]
        self._requests.clear()
        if self.answer_started:
            if self._observer is not None:
                self._log_answer(first)
            self._public.tunnel_closed(self, 0, None)  # cut short: a clean close says so
        else:
            self._public.tunnel_closed(self, 502, f"read from tunnel: {exc}", first)

    def eof_received(self) -> bool:
        if self._raw:
            public = self._public.transport
            if public is not None and public.can_write_eof():
                public.write_eof()
            return True
        self.closed = True
        if self._splitter.receive_eof():  # the answer ends with the connection
            if self._observer is not None and self._requests:
                self._log_answer(self._requests[0])
            self._requests.clear()
            self._public.tunnel_closed(self, 0, None)
        elif self._requests:
            self._answer_missing()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream = None
        self.closed = True
        if self._raw:
            self._log_upgrade_end()
            self._public.tunnel_closed(self, 0, None)
        elif self._requests:
            self._answer_missing()

    def _answer_missing(self) -> None:
        requests = list(self._requests)
        self._requests.clear()
        if self.answer_started:
            if self._observer is not None:
                self._log_answer(requests[0])
            self._public.tunnel_closed(self, 0, None)  # cut short: a clean close says so
        elif (
            self._answers  # a reused stream, closed by the origin right after an answer
            and not requests[0].resent
            and all(sent.data is not None for sent in requests)
            and self._public.resendable(self)
        ):
            self._public.resend(self, requests)
        else:
            self._public.tunnel_closed(self, 502, "read from tunnel: unexpected EOF", requests[0])
