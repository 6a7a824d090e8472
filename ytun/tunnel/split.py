"""Sans-I/O HTTP/1 message splitting: where each request or response starts and ends.

The server forwards the bytes it receives; it parses heads only to route requests, and it
has to know where every message ends to route the next one and to match answers to
requests. :class:`RequestSplitter` and :class:`ResponseSplitter` take whatever bytes arrive
(``receive``) and hand out events one at a time (``next_event``), in the style of h11:

* :class:`Head` -- a complete message head (``raw`` bytes to forward, ``head`` parsed);
* :class:`Body` -- body bytes, framing included (chunk sizes, trailers), as a span of the
  buffer given to ``receive``: nothing is copied until :meth:`Data.payload` is called, and
  not even then when the span is the whole buffer;
* :class:`Raw` -- bytes after a protocol switch (101, CONNECT), forwarded untouched;
* :data:`END` -- the message is complete;
* :data:`NEED_DATA` -- every byte received so far is accounted for;
* :data:`PAUSED` -- the splitter waits to be told something (whether an upgrade
  was accepted); the bytes after the upgrade request stay in the splitter meanwhile.

Framing errors raise :class:`~ytun.tunnel.http1.HttpError` with the status to answer
(400 for requests, 502 for responses); after one, the splitter raises it again.

Line endings: heads, chunk-size lines and trailers all end their lines with CRLF. A bare
LF or bare CR is an error, everywhere and in both directions. llhttp (httptools, the
request-head parser) rejects bare LF by default, and a proxy that forwards the bytes it
received must not read a message differently from the origin behind it: a bare LF that one
side takes as a line break and the other as header text is how requests get smuggled.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final

from .http1 import MAX_HEAD_SIZE, HttpError, RequestHead, parse_request_head
from .scan import plain_head_end, response_framing

MAX_LINE_SIZE: Final = 4096  # one chunk-size or trailer line
_HEX_DIGITS: Final = frozenset(b"0123456789abcdefABCDEF")
_MAX_CHUNK_SIZE_DIGITS: Final = 16


class State(enum.IntEnum):
    HEAD = 0  # before or inside a message head
    LENGTH_BODY = 1  # Content-Length bytes
    CHUNK_SIZE = 2  # a chunk-size line, extensions allowed after ";"
    CHUNK_DATA = 3
    CHUNK_DATA_END = 4  # the CRLF after chunk data
    TRAILERS = 5  # trailer lines up to the blank line
    UNTIL_CLOSE = 6  # a response body delimited by the connection's end
    AWAIT_UPGRADE = 7  # a request asked to switch protocols: paused
    RAW = 8  # protocols switched: bytes pass untouched
    CLOSED = 9  # the last message is complete: later bytes are dropped
    ERROR = 10


# Module-level names for the data path: an enum attribute lookup costs far more.
_HEAD = State.HEAD
_LENGTH_BODY = State.LENGTH_BODY
_CHUNK_SIZE = State.CHUNK_SIZE
_CHUNK_DATA = State.CHUNK_DATA
_CHUNK_DATA_END = State.CHUNK_DATA_END
_TRAILERS = State.TRAILERS
_UNTIL_CLOSE = State.UNTIL_CLOSE
_AWAIT_UPGRADE = State.AWAIT_UPGRADE
_RAW = State.RAW
_CLOSED = State.CLOSED

_AFTER_MESSAGE: Final = frozenset({State.HEAD, State.AWAIT_UPGRADE, State.RAW, State.CLOSED})

TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    State.HEAD: _AFTER_MESSAGE
    | {State.LENGTH_BODY, State.CHUNK_SIZE, State.UNTIL_CLOSE, State.ERROR},
    State.LENGTH_BODY: _AFTER_MESSAGE | {State.ERROR},
    State.CHUNK_SIZE: frozenset({State.CHUNK_DATA, State.TRAILERS, State.ERROR}),
    State.CHUNK_DATA: frozenset({State.CHUNK_DATA_END, State.ERROR}),
    State.CHUNK_DATA_END: frozenset({State.CHUNK_SIZE, State.ERROR}),
    State.TRAILERS: _AFTER_MESSAGE | {State.ERROR},
    State.UNTIL_CLOSE: frozenset({State.CLOSED, State.ERROR}),
    State.AWAIT_UPGRADE: frozenset({State.RAW, State.HEAD, State.CLOSED, State.ERROR}),
    State.RAW: frozenset(),
    State.CLOSED: frozenset(),
    State.ERROR: frozenset(),
}


# -- events ---------------------------------------------------------------------------------


class Head:
    """A complete head. ``raw`` is what to forward (leading empty lines dropped);
    ``request`` is, for a response, the request it answers."""

    __slots__ = ("raw", "head", "request")

    def __init__(
        self,
        raw: bytes,
        head: RequestHead | ResponseHead,
        request: RequestHead | None = None,
    ) -> None:
        self.raw = raw
        self.head = head
        self.request = request

    def __repr__(self) -> str:
        return f"Head({self.raw!r})"


class Data:
    """``buffer[start:stop]``, where ``buffer`` is the one last given to ``receive``."""

    __slots__ = ("buffer", "start", "stop")

    def __init__(self, buffer: bytes, start: int, stop: int) -> None:
        self.buffer = buffer
        self.start = start
        self.stop = stop

    def payload(self) -> bytes:
        buffer = self.buffer
        if self.start == 0 and self.stop == len(buffer):
            return buffer
        return buffer[self.start : self.stop]

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.payload()!r})"


class Body(Data):
    """Body bytes of the current message, framing included."""

    __slots__ = ()


class Raw(Data):
    """Bytes after a protocol switch."""

    __slots__ = ()


class End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


class Signal:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


END: Final = End()
NEED_DATA: Final = Signal("NEED_DATA")
PAUSED: Final = Signal("PAUSED")

Event = Head | Body | Raw | End | Signal


# -- the head-end rule ----------------------------------------------------------------------


class BareLineEnding(ValueError):
    """A LF without CR before it, or a CR without LF after it."""


def scan_head(buffer: bytes, start: int, collected: bytes | bytearray) -> int:
    """Where the head that continues at ``buffer[start]`` ends: the offset just past its
    blank line, or -1 if it is not in ``buffer`` yet. ``collected`` is the part of the head
    received earlier (only its last bytes are looked at), so each byte is scanned once.

    Raises :class:`BareLineEnding` as soon as a line ends in anything but CRLF."""
    if not collected:  # the usual case: a head that starts in this buffer
        found = buffer.find(b"\r\n\r\n", start)
        if found >= 0:
            stop = end = found + 4
            pending_cr = 0
        else:
            stop, end = -1, len(buffer)
            pending_cr = 1 if buffer[end - 1] == 13 else 0
        crlf = buffer.count(b"\r\n", start, end)
        if (
            buffer.count(b"\n", start, end) != crlf
            or buffer.count(b"\r", start, end) != crlf + pending_cr
        ):
            raise BareLineEnding
        return stop
    carry = collected[-3:]
    stop = -1
    joined = bytes(carry) + buffer[start : start + 3]
    found = joined.find(b"\r\n\r\n")
    if found >= 0:
        stop = start + found + 4 - len(carry)
    else:
        found = buffer.find(b"\r\n\r\n", start)
        if found >= 0:
            stop = found + 4
    end = stop if stop >= 0 else len(buffer)
    crlf = buffer.count(b"\r\n", start, end)
    joined_pair = 0
    if carry[-1] == 13 and end > start:  # a CR collected earlier, its LF now
        if buffer[start] != 10:
            raise BareLineEnding
        joined_pair = 1
    pending_cr = 1 if stop < 0 and end > start and buffer[end - 1] == 13 else 0
    if (
        buffer.count(b"\n", start, end) != crlf + joined_pair
        or buffer.count(b"\r", start, end) != crlf + pending_cr
    ):
        raise BareLineEnding
    return stop


# -- the splitters --------------------------------------------------------------------------


class _Splitter:
    """Framing shared by both directions: heads, Content-Length and chunked bodies."""

    _status = 400  # what a framing error is answered with
    _side = "request"

    def __init__(self, max_head_size: int = MAX_HEAD_SIZE) -> None:
        self.state = _HEAD
        self.max_head_size = max_head_size
        self._buffer = b""
        self._pos = 0
        self._partial = bytearray()  # a head or chunk line begun in an earlier buffer
        self._remaining = 0  # Content-Length or chunk bytes still to come
        self._trailer_size = 0
        self._ending = False  # the body is complete: END is the next event
        self._close_after = False  # the message in progress is the last one
        self._after_message = _HEAD  # the state once the message in progress is complete
        self._error: HttpError | None = None

    # -- input ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """More bytes, in order. Call :meth:`next_event` until NEED_DATA or PAUSED."""
        if self._pos < len(self._buffer):  # the caller stopped pulling events (paused)
            self._buffer = self._buffer[self._pos :] + data
        else:
            self._buffer = data
        self._pos = 0

    @property
    def received(self) -> bytes:
        """The buffer :attr:`position` is an offset in."""
        return self._buffer

    @property
    def position(self) -> int:
        """Offset in the last received buffer of the first byte not yet accounted for."""
        return self._pos

    @property
    def head_pending(self) -> bool:
        """Bytes of a head that is not complete yet have been received."""
        return self.state is _HEAD and (bool(self._partial) or self._pos < len(self._buffer))

    @property
    def closed(self) -> bool:
        """The last message is complete: nothing after it is read."""
        return self.state is _CLOSED

    @property
    def upgraded(self) -> bool:
        """Protocols switched: every byte is :class:`Raw`."""
        return self.state is _RAW

    @property
    def paused(self) -> bool:
        return self.state is _AWAIT_UPGRADE

    def unconsumed(self) -> bytes:
        """The bytes received and not accounted for by an event yet."""
        return self._buffer[self._pos :]

    @property
    def in_message(self) -> bool:
        """Part of a message has been received and its end has not."""
        return self.head_pending or self.state in (
            _LENGTH_BODY,
            _CHUNK_SIZE,
            _CHUNK_DATA,
            _CHUNK_DATA_END,
            State.TRAILERS,
            _UNTIL_CLOSE,
        )

    # -- output --------------------------------------------------------------------------

    def next_event(self) -> Event:
        """The next event; a framing error raises :class:`HttpError`, now and after."""
        if self._error is not None:
            raise self._error
        try:
            if self._ending:
                self._ending = False
                self._goto(self._after_message)
                return END
            state = self.state
            buffer = self._buffer
            pos = self._pos
            end = len(buffer)
            if state is _HEAD:
                if pos == end:
                    return NEED_DATA
                return self._next_head(buffer, pos, end)
            if state is _RAW:
                if pos == end:
                    return NEED_DATA
                self._pos = end
                return Raw(buffer, pos, end)
            if state is _AWAIT_UPGRADE:
                return PAUSED
            if state is _CLOSED:
                self._pos = end
                return NEED_DATA
            if state is _UNTIL_CLOSE:
                if pos == end:
                    return NEED_DATA
                self._pos = end
                return Body(buffer, pos, end)
            if state is _LENGTH_BODY:
                if pos == end:
                    return NEED_DATA
                take = min(self._remaining, end - pos)
                self._remaining -= take
                self._pos = pos + take
                if not self._remaining:
                    self._ending = True
                return Body(buffer, pos, pos + take)
            if pos == end:
                return NEED_DATA
            stop = self._scan_chunked(buffer, pos, end)
            self._pos = stop
            return Body(buffer, pos, stop)
        except BareLineEnding:
            raise self._fail(f"bare LF or CR in {self._side}") from None
        except HttpError as exc:
            raise self._fail(str(exc), exc.status) from None

    def _fail(self, message: str, status: int | None = None) -> HttpError:
        self._error = HttpError(status or self._status, message)
        self.state = State.ERROR
        return self._error

    def _goto(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise AssertionError(f"{self._side} splitter: {self.state} -> {state}")
        self.state = state

    def whole_message(self) -> Head | None:
        """The common case in one step: the bytes received start with one complete,
        ordinary message (no upgrade, no interim answer) whose body, if any, is all there.
        Returns its :class:`Head` with the message accounted for up to and including its
        END; more bytes may follow it (read them with :meth:`next_event`). Returns None,
        with nothing consumed, for anything else: :meth:`next_event` then does the work."""
        if (
            self.state is not _HEAD
            or self._pos
            or self._partial
            or self._ending
            or self._error is not None
        ):
            return None
        buffer = self._buffer
        if not buffer or buffer[0] == 13:  # empty, or empty lines first: the slow path
            return None
        # Not whole (scan_head looks at it once, later), too large, or a bare LF or CR
        # (next_event reports it): 0.
        stop = plain_head_end(buffer, self.max_head_size)
        if not stop:
            return None
        raw = buffer if stop == len(buffer) else buffer[:stop]
        try:
            event = self._plain_head(raw, len(buffer) - stop)
        except HttpError:
            return None  # next_event reports it, the same way
        if event is None:
            return None
        if self._ending:
            self._ending = False
            self._pos = stop
        else:  # a Content-Length body, all of it received
            self._pos = stop + self._remaining
            self._remaining = 0
        self._goto(self._after_message)
        return event

    def _plain_head(self, raw: bytes, body_received: int) -> Head | None:
        """:meth:`_head_complete` for an ordinary message whose body is within
        ``body_received`` bytes, else None without any change of state."""
        raise NotImplementedError

    # -- heads ---------------------------------------------------------------------------

    def _next_head(self, buffer: bytes, pos: int, end: int) -> Event:
        partial = self._partial
        # Empty lines before a message are skipped, never forwarded (RFC 9112 §2.2).
        while (not partial and buffer[pos] == 13) or partial == b"\r":
            if partial:  # a CR ended the previous buffer
                if buffer[pos] != 10:
                    raise BareLineEnding
                partial.clear()
                pos += 1
            while buffer.startswith(b"\r\n", pos):
                pos += 2
            if pos == end:
                self._pos = end
                return NEED_DATA
            if buffer[pos] == 13 and pos + 1 == end:
                partial.append(13)
                self._pos = end
                return NEED_DATA
            break
        if not partial:
            self._begin_head()
        stop = scan_head(buffer, pos, partial)
        size = len(partial) + (stop if stop >= 0 else end) - pos
        if size > self.max_head_size:
            raise HttpError(431 if self._status == 400 else 502, f"{self._side} head too large")
        if stop < 0:
            partial += buffer[pos:] if pos else buffer
            self._pos = end
            return NEED_DATA
        if partial:
            raw = bytes(partial) + buffer[pos:stop]
            partial.clear()
        else:
            raw = buffer if pos == 0 and stop == end else buffer[pos:stop]
        event = self._head_complete(raw)
        self._pos = stop  # only now: a head that fails is not accounted for
        return event

    def _begin_head(self) -> None:
        """The first byte of a head arrived."""

    def _head_complete(self, raw: bytes) -> Event:
        raise NotImplementedError

    def _start_body(self, *, chunked: bool, length: int) -> None:
        if chunked:
            self._goto(_CHUNK_SIZE)
        elif length:
            self._remaining = length
            self._goto(_LENGTH_BODY)
        else:
            self._ending = True

    # -- chunked bodies ------------------------------------------------------------------

    def _scan_chunked(self, buffer: bytes, pos: int, end: int) -> int:
        """Consume chunked framing and data of ``buffer[pos:end]``; where it stopped."""
        while pos < end:
            state = self.state
            if state is _CHUNK_DATA:
                take = min(self._remaining, end - pos)
                self._remaining -= take
                pos += take
                if not self._remaining:
                    self._goto(_CHUNK_DATA_END)
                continue
            if state is _CHUNK_DATA_END:
                # exactly CRLF, checked byte by byte so a missing one fails at once
                expected = b"\r\n"[len(self._partial) :]
                got = buffer[pos : pos + len(expected)]
                if not expected.startswith(got):
                    raise HttpError(self._status, "malformed chunk ending")
                pos += len(got)
                if len(got) < len(expected):
                    self._partial += got
                    return pos
                self._partial.clear()
                self._goto(_CHUNK_SIZE)
                continue
            newline = buffer.find(b"\n", pos, end)
            if newline < 0:
                self._partial += buffer[pos:end]
                if len(self._partial) > MAX_LINE_SIZE:
                    raise HttpError(self._status, "chunk line too long")
                if state is _CHUNK_SIZE and not _chunk_size_prefix_ok(self._partial):
                    raise HttpError(self._status, "malformed chunk size")
                return end
            if self._partial:
                self._partial += buffer[pos:newline]
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = buffer[pos:newline]
            pos = newline + 1
            if len(line) > MAX_LINE_SIZE:
                raise HttpError(self._status, "chunk line too long")
            if line.find(b"\r") != len(line) - 1:  # CR last and nowhere else
                raise BareLineEnding
            line = line[:-1]
            if state is _CHUNK_SIZE:
                size = _chunk_size(line)
                if size is None:
                    raise HttpError(self._status, "malformed chunk size")
                if size:
                    data_end = pos + size
                    if buffer[data_end : data_end + 2] == b"\r\n":
                        pos = data_end + 2  # the whole chunk is here: still CHUNK_SIZE
                        continue
                    self._remaining = size
                    self._goto(_CHUNK_DATA)
                else:
                    self._trailer_size = 0
                    self._goto(_TRAILERS)
            elif line:  # a trailer field
                self._trailer_size += len(line) + 2
                if self._trailer_size > self.max_head_size:
                    raise HttpError(self._status, "trailers too large")
            else:  # the blank line ending the trailers
                self._ending = True
                return pos
        return pos


def _chunk_size_prefix_ok(line: bytearray) -> bool:
    """Whether the start of a chunk-size line can still become a valid line."""
    semicolon = line.find(b";")
    size_end = semicolon if semicolon >= 0 else len(line)
    if size_end > _MAX_CHUNK_SIZE_DIGITS + 1:
        return False
    digits = bytes(line[:size_end])
    if semicolon < 0 and digits.endswith(b"\r"):
        digits = digits[:-1]
        if not digits:
            return False
    elif semicolon == 0:
        return False
    return len(digits) <= _MAX_CHUNK_SIZE_DIGITS and _HEX_DIGITS.issuperset(digits)


def _chunk_size(line: bytes) -> int | None:
    """The size of a chunk-size line (CRLF removed): hex digits only, then optionally
    ``;`` and extensions. ``int(x, 16)`` alone would take ``0x``, ``_``, signs and spaces."""
    semicolon = line.find(b";")
    digits = line if semicolon < 0 else line[:semicolon]
    if not digits or len(digits) > _MAX_CHUNK_SIZE_DIGITS or not _HEX_DIGITS.issuperset(digits):
        return None
    return int(digits, 16)


class RequestSplitter(_Splitter):
    """Splits the bytes of a public connection into requests.

    After a request that asks to switch protocols (Upgrade, CONNECT) the splitter pauses:
    the bytes after it are held until :meth:`upgrade_accepted` (they become :class:`Raw`)
    or :meth:`upgrade_refused` (they are read as requests again)."""

    def __init__(self, max_head_size: int = MAX_HEAD_SIZE) -> None:
        super().__init__(max_head_size)
        self._switching = False

    def _head_complete(self, raw: bytes) -> Event:
        try:
            head = parse_request_head(raw)
        except HttpError:
            # llhttp rejects any repeated Content-Length; identical ones may be collapsed
            # into one (RFC 9110 §8.6), and the origin then gets the collapsed head.
            collapsed = collapse_content_length(raw)
            if collapsed is None:
                raise
            raw = collapsed
            head = parse_request_head(raw)
        return self._accept(raw, head)

    def _plain_head(self, raw: bytes, body_received: int) -> Head | None:
        head = parse_request_head(raw)
        if (
            head.upgrade
            or head.method == b"CONNECT"
            or head.chunked
            or head.transfer_codings is not None
            or (head.content_length or 0) > body_received
        ):
            return None
        event = self._accept(raw, head)
        assert isinstance(event, Head)
        return event

    def _accept(self, raw: bytes, head: RequestHead) -> Event:
        check_request_framing(head)
        if head.absolute_host is not None:
            raw = with_host(raw, head.absolute_host)
            head.host = head.absolute_host
        self._close_after = not head.keep_alive
        self._switching = head.upgrade or head.method == b"CONNECT"
        if self._switching:
            self._after_message = _AWAIT_UPGRADE
        else:
            self._after_message = _CLOSED if self._close_after else _HEAD
        self._start_body(chunked=head.chunked, length=head.content_length or 0)
        return Head(raw, head)

    def _check_paused(self) -> None:
        if self.state is not _AWAIT_UPGRADE:
            raise RuntimeError(f"no upgrade is waiting for its answer ({self.state.name})")

    def upgrade_accepted(self) -> None:
        """The answer switched protocols: every later byte is :class:`Raw`."""
        self._check_paused()
        self._goto(_RAW)

    def upgrade_refused(self) -> None:
        """The answer was an ordinary one: read requests again."""
        self._check_paused()
        self._switching = False
        self._goto(_CLOSED if self._close_after else _HEAD)


class ResponseSplitter(_Splitter):
    """Splits the bytes of a tunnel stream into the answers to the requests sent down it.

    Call :meth:`expect` with each request, in the order they are sent: whether and how an
    answer has a body depends on its request (HEAD, CONNECT, Upgrade)."""

    _status = 502
    _side = "response"

    def __init__(self, max_head_size: int = MAX_HEAD_SIZE) -> None:
        super().__init__(max_head_size)
        self._requests: deque[RequestHead] = deque()

    def expect(self, request: RequestHead) -> None:
        self._requests.append(request)

    @property
    def expected(self) -> int:
        """Requests sent whose final answer has not started."""
        return len(self._requests)

    def receive_eof(self) -> bool:
        """The stream ended. True if that completes the message in progress (a body
        delimited by the connection's end); the caller then has every byte of it."""
        if self.state is _UNTIL_CLOSE and not self._ending:
            self._goto(_CLOSED)
            return True
        return False

    def _begin_head(self) -> None:
        if not self._requests:
            raise HttpError(502, "unexpected data from the tunnel")

    def _head_complete(self, raw: bytes) -> Event:
        return self._accept(raw, parse_response_head(raw))

    def _plain_head(self, raw: bytes, body_received: int) -> Head | None:
        if not self._requests:
            return None
        head = parse_response_head(raw)
        request = self._requests[0]
        if head.status < 200 or head.chunked or request.upgrade or request.method == b"CONNECT":
            return None
        has_body = request.method != b"HEAD" and head.status not in (204, 304)
        if has_body and (head.content_length is None or head.content_length > body_received):
            return None
        event = self._accept(raw, head)
        assert isinstance(event, Head)
        return event

    def _accept(self, raw: bytes, head: ResponseHead) -> Event:
        request = self._requests[0]
        status = head.status
        if status == 101:
            if not request.upgrade:
                raise HttpError(502, "101 answer to a request without Upgrade")
            head.switched = True
        elif request.method == b"CONNECT" and 200 <= status < 300:
            head.switched = True
        if head.switched:
            self._requests.clear()
            self._goto(_RAW)
            return Head(raw, head, request)
        if status < 200:
            return Head(raw, head, request)  # interim: the final answer follows
        self._requests.popleft()
        if request.method == b"HEAD" or status in (204, 304):
            self._ending = True
        elif head.chunked:
            self._goto(_CHUNK_SIZE)
        elif head.content_length is not None:
            self._start_body(chunked=False, length=head.content_length)
        else:
            head.close = True
            self._goto(_UNTIL_CLOSE)
        self._after_message = _CLOSED if head.close else _HEAD
        return Head(raw, head, request)


# -- heads: validation and parsing ------------------------------------------------------------


def check_request_framing(head: RequestHead) -> None:
    """The framing rules a request head must follow (RFC 9112), as :class:`HttpError`."""
    if head.host_count > 1:
        raise HttpError(400, "multiple Host headers")  # RFC 9112 §3.2
    codings = head.transfer_codings
    if codings is not None:
        if head.version == "1.0":
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")  # §6.1
        if head.content_length is not None:
            # §6.3 allows either; forwarding both is how requests get smuggled
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
            raise HttpError(400, "chunked must be the final transfer coding")  # §6.3
        head.chunked = True
    head.absolute_host = None
    target = head.target
    if target[:1] != b"/" and target[:1] != b"*":
        authority = absolute_authority(target)
        if authority is not None:
            head.absolute_host = authority


def collapse_content_length(raw: bytes) -> bytes | None:
    """``raw`` with repeated, identical Content-Length fields reduced to the first one;
    None if there is no such repetition to collapse."""
    lines = raw[:-4].split(b"\r\n")
    kept = [lines[0]]
    value: bytes | None = None
    repeated = False
    for line in lines[1:]:
        name, _, field = line.partition(b":")
        if name.strip().lower() == b"content-length":
            field = field.strip()
            if value is not None:
                if field != value:
                    return None
                repeated = True
                continue
            value = field
        kept.append(line)
    return b"\r\n".join(kept) + b"\r\n\r\n" if repeated else None


def absolute_authority(target: bytes) -> bytes | None:
    """The host of an absolute-form target (``http://host:port/path``), or None."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    authority = rest
    for delimiter in (b"/", b"?", b"#"):
        authority = authority.split(delimiter, 1)[0]
    authority = authority.rpartition(b"@")[2]
    return authority or None


def with_host(raw: bytes, host: bytes) -> bytes:
    """``raw`` (a request head) with its Host field set to ``host``."""
    lines = raw[:-4].split(b"\r\n")
    kept = [line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() != b"host"]
    return b"\r\n".join([lines[0], b"Host: " + host, *kept]) + b"\r\n\r\n"


class ResponseHead:
    """What the server needs from one response head."""

    __slots__ = ("status", "version", "content_length", "chunked", "close", "switched")

    def __init__(
        self,
        status: int,
        version: bytes,
        content_length: int | None = None,
        chunked: bool = False,
        close: bool | None = None,
    ) -> None:
        self.status = status
        self.version = version
        self.content_length = content_length
        self.chunked = chunked
        self.close = version == b"1.0" if close is None else close
        self.switched = False  # 101, or 2xx to CONNECT: the stream carries raw bytes now


def parse_response_head(raw: bytes) -> ResponseHead:
    """Status and framing of a complete response head (CRLF line endings checked by the
    splitter). Malformed framing is an :class:`HttpError` 502."""
    try:
        return ResponseHead(*response_framing(raw))
    except ValueError as exc:
        raise HttpError(502, str(exc)) from None
