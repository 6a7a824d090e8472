"""The server's public side: one protocol per public HTTP connection.

Each request head is parsed (httptools) to route it by its own Host; the bytes received
are then forwarded as they are, plus forwarding headers, down a tunnel stream. Consecutive
requests for the same client, protocol and port share one stream; responses are relayed
as they arrive and only scanned to find where each one ends.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from collections import deque
from typing import TYPE_CHECKING, Protocol

from . import koding
from .addr import split_host_port
from .http1 import (
    BodyScanner,
    HttpError,
    RequestHead,
    error_response,
    find_head_end,
    go_quote,
    parse_request_head,
    parse_response_head,
)

if TYPE_CHECKING:
    from .links import StreamRequester


class Link(Protocol):
    """A connected client, as the public side sees it."""

    def request_stream(self, kind: int, port: int, protocol: StreamRequester) -> None: ...


class Gateway(Protocol):
    """The public side's narrow port to the server: nothing else of it is used here."""

    forwarded_headers: bool
    max_head_size: int

    def lookup_host(self, host: str) -> str | None: ...

    def link_for(self, identifier: str) -> Link | None: ...

    def control_connect(
        self, public: PublicProtocol, head: RequestHead, extra: bytes
    ) -> bytes | None: ...

    def opened(self, public: PublicProtocol) -> None: ...

    def closed(self, public: PublicProtocol) -> None: ...


logger = logging.getLogger("ytun.server")
access_log = logging.getLogger("ytun.access")

_HEAD, _BODY, _RAW, _WAIT, _CONTROL, _CLOSED = range(6)
_EARLY_LIMIT = 1024 * 1024


def is_control_path(target: bytes) -> bool:
    path = target.split(b"?", 1)[0].decode("latin-1")
    return path.startswith("/") and posixpath.normpath(path).lstrip("/") == "_controlPath"


class PublicProtocol(asyncio.Protocol):
    """One public connection on the server's listener."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._transport: asyncio.Transport | None = None
        self._pending = b""
        self._state = _HEAD
        self._body: BodyScanner | None = None
        self._body_sink: Tunnel | None = None
        self._tunnel: Tunnel | None = None
        self._waiting: tuple[RequestHead, bytes] | None = None
        self._last_request = False
        self._pause_reasons: set[str] = set()
        self._writing_paused = False
        self._forwarded = b""
        self.activity = 0  # reads so far, for the idle policy
        self._eof = False  # the client half-closed: close once every answer is out

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._gateway.opened(self)
        if self._gateway.forwarded_headers:
            peer = transport.get_extra_info("peername")
            scheme = b"https" if transport.get_extra_info("sslcontext") else b"http"
            address = peer[0].encode() if isinstance(peer, tuple) else b""
            self._forwarded = (
                b"X-Forwarded-For: "
                + address
                + b"\r\nX-Forwarded-Proto: "
                + scheme
                + b"\r\nX-Forwarded-Host: "
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._transport = None
        self._gateway.closed(self)
        tunnel = self._tunnel
        if tunnel is not None:
            self._tunnel = None
            tunnel.abandon()

    def eof_received(self) -> bool:
        if self._state == _RAW and self._tunnel is not None:
            self._tunnel.send_eof()
            return True
        # Keep the connection open while answers to requests already sent go out.
        self._eof = True
        return self._tunnel is not None and self._tunnel.busy

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._tunnel is not None:
            self._tunnel.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._tunnel is not None:
            self._tunnel.resume_reading()

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
        """The client's IP address, for the access log."""
        peer = self._transport.get_extra_info("peername") if self._transport else None
        return peer[0] if isinstance(peer, tuple) else "-"

    @property
    def max_head_size(self) -> int:
        return self._gateway.max_head_size

    def _hand_to_control(self, head: RequestHead, extra: bytes) -> bool:
        """Offer a CONNECT to the server: True once a client owns the connection; False
        if it was refused and answered, and requests are read again."""
        answer = self._gateway.control_connect(self, head, extra)
        if answer is None:
            return True
        self._state = _HEAD
        if self._transport is not None:
            self._transport.write(answer)
        return False

    @property
    def idle(self) -> bool:
        """No request in flight (used by a graceful server close)."""
        return self._tunnel is None or not self._tunnel.busy

    def close(self) -> None:
        # never twice: a second close() of an asyncio SSL transport breaks later writes
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # -- requests ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.activity += 1
        if self._pending:
            data = self._pending + data
            self._pending = b""
        self._process(data)

    def _process(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _BODY:
                stop = self._body.scan(data, pos, end)  # type: ignore[union-attr]
                if self._body_sink is not None:
                    self._body_sink.send(data if pos == 0 and stop == end else data[pos:stop])
                pos = stop
                if self._body.done:  # type: ignore[union-attr]
                    self._state = _HEAD
                    self._body = self._body_sink = None
            elif state == _RAW:
                self._tunnel.send(data if pos == 0 else data[pos:])  # type: ignore[union-attr]
                return
            elif state == _HEAD:
                if self._last_request:
                    return  # the client said this was its last request
                head_end = data.find(b"\r\n\r\n", pos)
                if head_end < 0 or head_end + 4 - pos > self._gateway.max_head_size:
                    if head_end < 0 and end - pos <= self._gateway.max_head_size:
                        self._pending = data[pos:]
                    else:
                        self._fail(431, "request header too large")
                    return
                raw = data[pos : head_end + 4]
                pos = head_end + 4
                try:
                    head = parse_request_head(raw)
                except HttpError as exc:
                    self._fail(exc.status, str(exc))
                    return
                if not self._start_request(head, raw):
                    self._waiting = (head, raw)
                    self._state = _WAIT
                    self._pending = data[pos:]
                    self.pause("wait")
                    return
                if self._state == _CONTROL and self._hand_to_control(head, data[pos:]):
                    return
            elif state == _WAIT:
                self._pending = data[pos:]
                return
            else:
                return

    def _route(self, head: RequestHead) -> tuple[str, int, int] | tuple[None, int, str]:
        """``(identifier, protocol, port)``, or ``(None, status, message)`` for an error."""
        if not head.host:
            return None, 502, "request host is empty"
        host = head.host.decode("latin-1").lower()
        identifier = self._gateway.lookup_host(host)
        if identifier is None:
            return None, 502, f"no virtual host available for {go_quote(host)}"
        return identifier, koding.WS if head.websocket else koding.HTTP, split_host_port(host)[1]

    def _start_request(self, head: RequestHead, raw: bytes) -> bool:
        """Route and forward one request head; False if it must wait for earlier answers."""
        tunnel = self._tunnel
        if is_control_path(head.target):
            if tunnel is not None and tunnel.busy:
                return False
            if head.method != b"CONNECT":
                self._answer(head, 405, "405 must CONNECT\n")
                return True
            self._state = _CONTROL
            return True
        identifier, kind, port = self._route(head)
        if (
            tunnel is not None
            and tunnel.busy
            and (identifier is None or tunnel.key != (identifier, kind, port))
        ):
            return False
        if identifier is None:
            self._answer(head, kind, port)  # type: ignore[arg-type]
            return True
        key = (identifier, kind, port)
        if tunnel is not None and (tunnel.key != key or tunnel.closed):
            tunnel.finish()
            self._tunnel = tunnel = None
        if tunnel is None:
            link = self._gateway.link_for(identifier)
            if link is None:
                self._answer(head, 502, "no client session established")
                return True
            tunnel = Tunnel(self, key)
            try:
                link.request_stream(kind, port, tunnel)  # type: ignore[arg-type]
            except ConnectionError:
                self._answer(head, 502, "no client session established")
                return True
            self._tunnel = tunnel
            if self._writing_paused:
                tunnel.pause_reading()
        if self._forwarded:
            raw = b"".join((raw[:-2], self._forwarded, head.host, b"\r\n\r\n"))
        tunnel.send_request(raw, head)
        if head.upgrade:
            self._state = _RAW
        elif head.chunked or head.content_length:
            self._body = BodyScanner(head.content_length, chunked=head.chunked)
            self._body_sink = tunnel
            self._state = _BODY
        if not head.keep_alive:
            self._last_request = True
        return True

    def _answer(self, head: RequestHead, status: int, message: str) -> None:
        """Answer a request ourselves, in order, skipping its body."""
        close = not head.keep_alive
        version = "1.0" if head.version == "1.0" else "1.1"
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                '%s "%s %s" %d',
                self.peer,
                head.method.decode("latin-1"),
                head.target.decode("latin-1"),
                status,
            )
        self._transport.write(
            error_response(
                status,
                message,
                close=close,  # type: ignore[union-attr]
                version=version,
            )
        )
        if close:
            self._last_request = True
            self._transport.close()  # type: ignore[union-attr]
        elif head.chunked or head.content_length:
            self._body = BodyScanner(head.content_length, chunked=head.chunked)
            self._body_sink = None
            self._state = _BODY

    def _fail(self, status: int, message: str) -> None:
        """A request we cannot even delimit: answer and close the connection."""
        transport = self._transport
        self._state = _CLOSED
        if transport is None:
            return
        if self._tunnel is not None and self._tunnel.busy:
            transport.close()  # answers are in flight; an error now would interleave
            return
        transport.write(error_response(status, message, close=True))
        transport.close()

    # -- events from the tunnel ----------------------------------------------------------

    def client_leaving(self, identifier: str) -> None:
        """That client is shutting down: end our stream to it once its answers are out."""
        tunnel = self._tunnel
        if tunnel is not None and tunnel.key[0] == identifier:
            tunnel.draining = True
            if not tunnel.busy:
                self._tunnel = None
                tunnel.finish()

    def tunnel_idle(self, tunnel: Tunnel) -> None:
        """Every request sent down ``tunnel`` has its full answer: waiting requests go on."""
        if tunnel is not self._tunnel:
            return
        if tunnel.draining:
            self._tunnel = None
            tunnel.finish()
        if self._state != _WAIT:
            if self._eof or self._last_request:
                self.close()  # the client sent its last request and has every answer
            return
        head, raw = self._waiting  # type: ignore[misc]
        self._waiting = None
        self._state = _HEAD
        self._start_request(head, raw)
        if self._state == _CONTROL:
            pending, self._pending = self._pending, b""
            if self._hand_to_control(head, pending):
                return
            self._pending = pending
        self.resume("wait")
        if self._pending:
            pending, self._pending = self._pending, b""
            self._process(pending)
        if (self._eof or self._last_request) and self.idle and self._state != _WAIT:
            self.close()

    def tunnel_closed(self, tunnel: Tunnel, status: int, message: str | None) -> None:
        """``tunnel`` ended with answers missing: answer what can be, then close."""
        if tunnel is not self._tunnel:
            return
        self._tunnel = None
        transport = self._transport
        if transport is None:
            return
        if message is not None:
            transport.write(error_response(status, message, close=True))
        transport.close()
        self._state = _CLOSED


class Tunnel(asyncio.Protocol):
    """The response side of one tunnel stream: relays answers to the public connection."""

    def __init__(self, public: PublicProtocol, key: tuple[str, int, int]) -> None:
        self.key = key
        self.closed = False
        self.draining = False  # its client is leaving: no requests after the current ones
        self._public = public
        self._stream: asyncio.Transport | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._reading_paused = False
        self._requests: deque[RequestHead] = deque()
        self._head = b""
        self._body: BodyScanner | None = None
        self._raw = False
        self._answered = False  # bytes of the current answer were already relayed
        self._close_after = False

    @property
    def busy(self) -> bool:
        return bool(self._requests) or self._raw

    # -- requests going out --------------------------------------------------------------

    def send_request(self, data: bytes, head: RequestHead) -> None:
        self._requests.append(head)
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
        """No more requests will use this tunnel (it is idle)."""
        self.closed = True
        if self._stream is not None:
            self._stream.close()

    def abandon(self) -> None:
        """The public side is gone: drop the stream, resetting it if answers are pending."""
        self.closed = True
        stream = self._stream
        if stream is not None:
            if self.busy:
                stream.abort()
            else:
                stream.close()

    def tunnel_failed(self, message: str) -> None:
        """No stream arrived (timeout, or the client went away)."""
        self.closed = True
        self._public.tunnel_closed(self, 502, message)

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
        if public is None:
            return
        public.write(data)
        self._answered = True
        if self._raw:
            return
        pos = 0
        end = len(data)
        while pos < end:
            if self._body is not None:
                pos = self._body.scan(data, pos, end)
                if self._body.done:
                    self._answer_done()
                continue
            if not self._requests:
                return  # bytes beyond the last answer: nothing left to delimit
            chunk = data[pos:] if pos else data
            buffered = self._head + chunk if self._head else chunk
            head_end = find_head_end(buffered)
            if head_end < 0:
                if len(buffered) > self._public.max_head_size:
                    self._broken()
                    return
                self._head = buffered
                return
            pos += head_end - len(self._head)
            self._head = b""
            try:
                self._start_answer(buffered[:head_end])
            except HttpError:
                self._broken()
                return
            if self._raw:
                return

    def _start_answer(self, raw: bytes) -> None:
        head = parse_response_head(raw)
        request = self._requests[0]
        status = head.status
        if access_log.isEnabledFor(logging.INFO) and not 100 <= status < 200:
            access_log.info(
                '%s "%s %s" %d %s',
                self._public.peer,
                request.method.decode("latin-1"),
                request.target.decode("latin-1"),
                status,
                request.host.decode("latin-1"),
            )
        if status == 101:
            self._raw = True
            self._requests.clear()
            return
        if status < 200:
            return  # interim answer; the final one follows
        self._close_after = head.close or request.upgrade
        if request.method == b"HEAD" or status in (204, 304):
            self._body = BodyScanner(0)
        elif head.chunked:
            self._body = BodyScanner(chunked=True)
        elif head.content_length is not None:
            self._body = BodyScanner(head.content_length)
        else:
            self._body = BodyScanner(until_close=True)
        if self._body.done:
            self._answer_done()

    def _answer_done(self) -> None:
        self._body = None
        self._answered = False
        self._requests.popleft()
        if self._close_after:
            self.closed = True
            self._public.tunnel_closed(self, 0, None)
            return
        if not self._requests:
            self._public.tunnel_idle(self)

    def _broken(self) -> None:
        """The answer cannot be delimited: nothing after it can be trusted."""
        self.closed = True
        if self._stream is not None:
            self._stream.abort()
        self._public.tunnel_closed(self, 0, None)

    def eof_received(self) -> bool:
        if self._raw:
            public = self._public.transport
            if public is not None and public.can_write_eof():
                public.write_eof()
            return True
        self.closed = True
        if self._body is not None and self._body.until_close:
            self._public.tunnel_closed(self, 0, None)  # the answer ends with the connection
        elif self._requests:
            self._answer_missing()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream = None
        self.closed = True
        if self._raw:
            self._public.tunnel_closed(self, 0, None)
        elif self._requests:
            self._answer_missing()

    def _answer_missing(self) -> None:
        if self._answered:
            self._public.tunnel_closed(self, 0, None)  # cut short: a clean close says so
        else:
            self._public.tunnel_closed(self, 502, "read from tunnel: unexpected EOF")
