"""One yamux stream, exposed as an asyncio Transport for any asyncio Protocol.

The stream owns its state: the multiplexer routes each Data and Window Update frame to
:meth:`Stream.on_data` / :meth:`Stream.on_window_update`, which act on the frame's flags in
one place, and asks it for outgoing frames. The attached protocol sees ``data_received`` /
``eof_received`` / ``connection_lost`` and ``pause_writing`` / ``resume_writing``, exactly as
on a TCP transport.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from .._const import FLAG_ACK, FLAG_FIN, FLAG_RST, TYPE_DATA, TYPE_WINDOW_UPDATE
from ..errors import StreamOpenTimeoutError, StreamResetError

if TYPE_CHECKING:
    from .core import Cancellable, Multiplexer

logger = logging.getLogger("ytun.yamux")

# Payloads up to this size are copied next to their header (one buffer instead of two).
_JOIN_LIMIT = 2048


class StreamState(enum.Enum):
    """Where a stream is in its life on the wire (hashicorp/yamux ``stream.go``)."""

    #: Registered locally, SYN not yet queued.
    INIT = "init"
    #: Our SYN is queued or sent; no ACK yet (data may flow already).
    SYN_SENT = "syn-sent"
    #: The peer's SYN arrived; our ACK is not queued yet.
    SYN_RECEIVED = "syn-received"
    #: Both sides may send.
    ESTABLISHED = "established"
    #: We sent FIN; the peer may still send.
    LOCAL_CLOSE = "local-close"
    #: The peer sent FIN; we may still send.
    REMOTE_CLOSE = "remote-close"
    #: Both FINs exchanged.
    CLOSED = "closed"
    #: Reset by either side (RST), or ended with the session.
    RESET = "reset"


_INIT = StreamState.INIT
_SYN_SENT = StreamState.SYN_SENT
_SYN_RECEIVED = StreamState.SYN_RECEIVED
_ESTABLISHED = StreamState.ESTABLISHED
_LOCAL_CLOSE = StreamState.LOCAL_CLOSE
_REMOTE_CLOSE = StreamState.REMOTE_CLOSE
_CLOSED = StreamState.CLOSED
_RESET = StreamState.RESET


class Stream(asyncio.Transport):
    """A yamux stream. Create with ``Session.open_stream`` or ``Session.accept_stream``."""

    __slots__ = (
        "_mux",
        "_hooks",
        "stream_id",
        "_state",
        "_window",
        "_protocol",
        "_recv",
        "_reading_paused",
        "_send",
        "_send_size",
        "_high",
        "_low",
        "_protocol_paused",
        "_fin_wanted",
        "_eof_delivered",
        "_closing",
        "_done",
        "_timer",
        "_delivery_scheduled",
    )

    def __init__(self, mux: Multiplexer, stream_id: int, window: Any, state: StreamState) -> None:
        super().__init__()
        config = mux.config
        self._mux = mux
        self._hooks = mux.hooks
        self.stream_id = stream_id
        self._state = state
        self._window = window
        self._protocol: asyncio.BaseProtocol | None = None
        self._recv: deque[bytes] = deque()
        self._reading_paused = False
        self._send: deque[bytes | memoryview] = deque()
        self._send_size = 0
        self._high = config.stream_write_high
        self._low = config.stream_write_low
        self._protocol_paused = False
        # write_eof() or close() asked for a FIN (it follows the queued data).
        self._fin_wanted = False
        self._eof_delivered = False
        # close() was called: inbound data is credited back and dropped.
        self._closing = False
        # The stream left the session and its protocol was told (connection_lost).
        self._done = False
        self._timer: Cancellable | None = None
        self._delivery_scheduled = False

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} {self._state.value}>"

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def finished(self) -> bool:
        """True once the stream has left its session (closed or reset, protocol told)."""
        return self._done

    def _fin_received(self) -> bool:
        state = self._state
        return state is _REMOTE_CLOSE or state is _CLOSED

    def _fin_sent(self) -> bool:
        state = self._state
        return state is _LOCAL_CLOSE or state is _CLOSED

    # -- opening -------------------------------------------------------------------------

    def syn_sent(self, timeout: float | None) -> None:
        """Our SYN is queued; reset the stream if the peer does not answer in time."""
        self._state = _SYN_SENT
        if timeout is not None:
            self._timer = self._hooks.call_later(timeout, self._open_timed_out)

    def ack_sent(self) -> None:
        """Our ACK for the peer's SYN is queued."""
        if self._state is _SYN_RECEIVED:
            self._state = _ESTABLISHED

    # -- attaching a protocol ------------------------------------------------------------

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        """Give the stream its protocol (``connection_made``); buffered data follows."""
        self._protocol = protocol
        protocol.connection_made(self)
        if self._recv or self._fin_received():
            self._schedule_delivery()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[return-value]

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "stream_id":
            return self.stream_id
        if name == "session":
            return self._hooks.session
        return self._hooks.get_extra_info(name, default)

    # -- reading -------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._done

    def pause_reading(self) -> None:
        """Stop delivering data; the peer is granted no more window until resumed."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self._recv or self._fin_received():
                self._schedule_delivery()

    # -- frames from the peer --------------------------------------------------------------

    def on_data(self, flags: int, payload: bytes) -> None:
        """A Data frame for this stream (SYN already handled by the multiplexer)."""
        if flags and self._on_flags(flags):
            return
        if payload:
            self.on_payload(payload)
        if flags & FLAG_FIN:
            self._on_remote_fin()

    def on_payload(self, payload: bytes) -> None:
        """The body of a Data frame, after its flags: the hot path of the receive side."""
        protocol = self._protocol
        state = self._state
        if (
            (state is _ESTABLISHED or state is _LOCAL_CLOSE)
            and protocol is not None
            and not self._reading_paused
            and not self._recv
            and not self._closing
        ):
            # Straight to the protocol, no buffering.
            delta = self._window.receive_consumed(len(payload))
            if delta:
                self._mux.window_update(self.stream_id, delta)
            try:
                protocol.data_received(payload)  # type: ignore[attr-defined]
            except Exception as exc:
                self._protocol_failed(exc)
        elif state is _REMOTE_CLOSE or state is _CLOSED:
            self.reset(
                StreamResetError(f"peer sent data on stream {self.stream_id} after closing it")
            )
        else:
            self._buffer(payload)

    def on_window_update(self, flags: int, delta: int) -> None:
        """A Window Update frame for this stream (SYN already handled)."""
        if flags and self._on_flags(flags):
            return
        if delta:
            self._window.add_send(delta)
            if self._send:
                self._mux.stream_ready(self)
        if flags & FLAG_FIN:
            self._on_remote_fin()

    def _on_flags(self, flags: int) -> bool:
        """ACK and RST, taken before the frame's body; True if the stream was reset."""
        if flags & (FLAG_ACK | FLAG_FIN):  # a FIN answers an open as well as an ACK does
            self._on_ack()
        if flags & FLAG_RST:
            self._finish(StreamResetError(f"stream {self.stream_id} was reset by the peer"))
            return True
        return False

    def _on_ack(self) -> None:
        if self._state is _SYN_SENT:
            self._state = _ESTABLISHED
        if self._mux.stream_acked(self) and not self._closing:
            self._cancel_timer()  # the open timer; after close() it is the close timer

    def _buffer(self, payload: bytes) -> None:
        """Keep a payload the protocol cannot take now."""
        size = len(payload)
        if self._closing or self._done:
            # Nobody will read it: credit it back at once so the peer can finish.
            self._mux.window_update(self.stream_id, self._window.receive_consumed(size))
            return
        self._window.receive(size)
        self._recv.append(payload)
        if self._protocol is not None and not self._reading_paused:
            self._schedule_delivery()

    def _schedule_delivery(self) -> None:
        if not self._delivery_scheduled:
            self._delivery_scheduled = True
            self._hooks.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivery_scheduled = False
        protocol = self._protocol
        if protocol is None or self._done:
            return
        window = self._window
        while self._recv and not self._reading_paused and not self._closing:
            chunk = self._recv.popleft()
            self._mux.window_update(self.stream_id, window.consume(len(chunk)))
            try:
                protocol.data_received(chunk)  # type: ignore[attr-defined]
            except Exception as exc:
                self._protocol_failed(exc)
                return
        if self._fin_received() and not self._recv and not self._eof_delivered:
            self._deliver_eof()

    def _on_remote_fin(self) -> None:
        state = self._state
        if state is _REMOTE_CLOSE or state is _CLOSED or self._done:
            return  # a duplicate FIN is harmless
        self._state = _CLOSED if state is _LOCAL_CLOSE else _REMOTE_CLOSE
        if self._closing:
            self._eof_delivered = True
        elif not self._recv and self._protocol is not None:
            self._deliver_eof()
        elif self._protocol is not None and not self._reading_paused:
            self._schedule_delivery()
        self._maybe_done()

    def _deliver_eof(self) -> None:
        self._eof_delivered = True
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[union-attr]
        except Exception as exc:
            self._protocol_failed(exc)
            return
        if not keep_open:
            self.close()
        self._maybe_done()

    # -- writing -------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._fin_wanted:
            raise RuntimeError("cannot write to a stream after write_eof() or close()")
        if self._done:
            return  # like asyncio transports: the protocol already got connection_lost
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # never keep a buffer the caller may reuse
        self._send.append(data)
        self._send_size += len(data)
        self._mux.stream_ready(self)
        if self._send_size > self._high and not self._protocol_paused:
            self._pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Half-close: FIN follows the data already written; the peer may still send."""
        if self._fin_wanted or self._done:
            return
        self._fin_wanted = True
        self._mux.stream_ready(self)

    def get_write_buffer_size(self) -> int:
        return self._send_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 4 * low if low is not None else self._mux.config.stream_write_high
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        if self._send_size > high and not self._protocol_paused:
            self._pause_protocol()

    def _pause_protocol(self) -> None:
        self._protocol_paused = True
        if self._protocol is not None:
            try:
                self._protocol.pause_writing()
            except Exception:
                logger.exception("pause_writing() of %r failed", self._protocol)

    def wants_emit(self) -> bool:
        """True if :meth:`emit` has a frame to add now."""
        return not self._done and (
            bool(self._send and self._window.send_credit)
            or (self._fin_wanted and not self._send and not self._fin_sent())
        )

    def emit(self, out: list[bytes | memoryview], encode_header: Any, max_payload: int) -> None:
        """Append our next frames to ``out``: up to about ``max_payload`` bytes of data
        within the send window (one frame, or several small ones), then FIN if all is sent."""
        window = self._window
        send = self._send
        stream_id = self.stream_id
        budget = max_payload
        while send and window.send_credit and budget > 0:
            chunk = send[0]
            size = window.take_send(min(len(chunk), max_payload))
            budget -= size
            if size == len(chunk):
                send.popleft()
                piece = chunk
            else:
                view = chunk if type(chunk) is memoryview else memoryview(chunk)
                piece, send[0] = view[:size], view[size:]
            if size <= _JOIN_LIMIT:
                out.append(encode_header(TYPE_DATA, 0, stream_id, size) + piece)
            else:
                out.append(encode_header(TYPE_DATA, 0, stream_id, size))
                out.append(piece)
            self._send_size -= size
        # FIN travels alone, never on a Data frame: hashicorp/yamux handles a Data frame's
        # flags before its payload, so a reader there could see EOF and lose the data.
        fin_sent = False
        if self._fin_wanted and not send and not self._fin_sent():
            out.append(encode_header(TYPE_WINDOW_UPDATE, FLAG_FIN, stream_id, 0))
            self._state = _CLOSED if self._state is _REMOTE_CLOSE else _LOCAL_CLOSE
            fin_sent = True
        if self._protocol_paused and self._send_size <= self._low:
            self._protocol_paused = False
            if self._protocol is not None:
                try:
                    self._protocol.resume_writing()
                except Exception:
                    logger.exception("resume_writing() of %r failed", self._protocol)
        if fin_sent:
            self._maybe_done()

    # -- closing -------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing or self._fin_wanted or self._done

    def close(self) -> None:
        """Send FIN after the queued data, stop receiving; gone once the peer closes too."""
        if self._closing or self._done:
            return
        self._closing = True
        if self._recv:
            self._mux.window_update(self.stream_id, self._window.consume(sum(map(len, self._recv))))
            self._recv.clear()
        self.write_eof()
        timeout = self._mux.config.stream_close_timeout
        if timeout is not None and not self._fin_received():
            self._cancel_timer()
            self._timer = self._hooks.call_later(timeout, self._close_timed_out)
        self._maybe_done()

    def abort(self) -> None:
        """Reset the stream (RST): queued data in both directions is dropped."""
        self.reset()

    def reset(self, exc: BaseException | None = None) -> None:
        if self._done:
            return
        self._mux.send_reset(self.stream_id)
        self._finish(exc)

    def _close_timed_out(self) -> None:
        self._timer = None
        self.reset()

    def _open_timed_out(self) -> None:
        self._timer = None
        self.reset(
            StreamOpenTimeoutError(
                f"stream {self.stream_id} was not acknowledged within "
                f"{self._mux.config.stream_open_timeout} s"
            )
        )

    def _protocol_failed(self, exc: Exception) -> None:
        logger.error(
            "protocol on stream %d raised; resetting the stream", self.stream_id, exc_info=exc
        )
        self.reset(exc)

    def _maybe_done(self) -> None:
        if (
            self._state is _CLOSED
            and not self._done
            and (self._eof_delivered or self._protocol is None)
        ):
            self._finish(None, _CLOSED)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def session_ended(self, exc: BaseException | None) -> None:
        """The session is over: the stream ends with it (closed, as hashicorp does)."""
        self._finish(exc, _CLOSED)

    def _finish(self, exc: BaseException | None, state: StreamState = _RESET) -> None:
        """Remove the stream for good and tell the protocol, exactly once."""
        if self._done:
            return
        self._done = True
        self._state = state
        self._cancel_timer()
        self._recv.clear()
        self._send.clear()
        self._send_size = 0
        self._mux.stream_finished(self)
        if self._protocol is not None:
            self._hooks.call_soon(self._protocol.connection_lost, exc)
