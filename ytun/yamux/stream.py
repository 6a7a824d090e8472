"""One yamux stream, exposed as an asyncio Transport for any asyncio Protocol.

The session feeds it frames and asks it for outgoing ones; the attached protocol sees
``data_received`` / ``eof_received`` / ``connection_lost`` and ``pause_writing`` /
``resume_writing``, exactly as on a TCP transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from .._const import FLAG_FIN, TYPE_DATA, TYPE_WINDOW_UPDATE
from ..errors import StreamOpenTimeoutError, StreamResetError

if TYPE_CHECKING:
    from .session import Session

logger = logging.getLogger("ytun.yamux")

# Payloads up to this size are copied next to their header (one buffer instead of two).
_JOIN_LIMIT = 2048


class Stream(asyncio.Transport):
    """A yamux stream. Create with ``Session.open_stream`` or ``Session.accept_stream``."""

    __slots__ = (
        "_session",
        "stream_id",
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
        "_fin_sent",
        "_remote_fin",
        "_eof_delivered",
        "_closing",
        "_acked",
        "_done",
        "_timer",
        "_delivery_scheduled",
    )

    def __init__(self, session: Session, stream_id: int, window: Any, *, acked: bool) -> None:
        super().__init__()
        config = session.config
        self._session = session
        self.stream_id = stream_id
        self._window = window
        self._protocol: asyncio.BaseProtocol | None = None
        self._recv: deque[bytes] = deque()
        self._reading_paused = False
        self._send: deque[bytes | memoryview] = deque()
        self._send_size = 0
        self._high = config.stream_write_high
        self._low = config.stream_write_low
        self._protocol_paused = False
        self._fin_wanted = False
        self._fin_sent = False
        self._remote_fin = False
        self._eof_delivered = False
        self._closing = False
        self._acked = acked
        self._done = False
        self._timer: asyncio.TimerHandle | None = None
        self._delivery_scheduled = False

    def __repr__(self) -> str:
        state = "done" if self._done else "closing" if self._closing else "open"
        return f"<Stream {self.stream_id} {state}>"

    # -- attaching a protocol ------------------------------------------------------------

    def _attach(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        protocol.connection_made(self)
        if self._recv or self._remote_fin:
            self._schedule_delivery()

    def get_protocol(self) -> asyncio.BaseProtocol:  # type: ignore[override]
        return self._protocol  # type: ignore[return-value]

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "stream_id":
            return self.stream_id
        if name == "session":
            return self._session
        return self._session.get_extra_info(name, default)

    # -- reading -------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._done

    def pause_reading(self) -> None:
        """Stop delivering data; the peer is granted no more window until resumed."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self._recv or self._remote_fin:
                self._schedule_delivery()

    def _on_data(self, payload: bytes) -> None:
        """A Data payload arrived (the session already took the fast path if it could)."""
        size = len(payload)
        if self._closing or self._done:
            # Nobody will read it: credit it back at once so the peer can finish.
            self._session._window_update(self.stream_id, self._window.receive_consumed(size))
            return
        self._window.receive(size)
        self._recv.append(payload)
        if self._protocol is not None and not self._reading_paused:
            self._schedule_delivery()

    def _schedule_delivery(self) -> None:
        if not self._delivery_scheduled:
            self._delivery_scheduled = True
            self._session._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivery_scheduled = False
        protocol = self._protocol
        if protocol is None or self._done:
            return
        window = self._window
        while self._recv and not self._reading_paused and not self._closing:
            chunk = self._recv.popleft()
            self._session._window_update(self.stream_id, window.consume(len(chunk)))
            try:
                protocol.data_received(chunk)  # type: ignore[attr-defined]
            except Exception as exc:
                self._protocol_failed(exc)
                return
        if self._remote_fin and not self._recv and not self._eof_delivered:
            self._deliver_eof()

    def _on_remote_fin(self) -> None:
        if self._remote_fin:
            return  # a duplicate FIN is harmless
        self._remote_fin = True
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
        self._session._stream_ready(self)
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
        self._session._stream_ready(self)

    def get_write_buffer_size(self) -> int:
        return self._send_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 4 * low if low is not None else self._session.config.stream_write_high
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

    def _wants_emit(self) -> bool:
        return not self._done and (
            bool(self._send and self._window.send_credit)
            or (self._fin_wanted and not self._fin_sent and not self._send)
        )

    def _emit(self, out: list[bytes | memoryview], encode_header: Any, max_payload: int) -> None:
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
        if self._fin_wanted and not self._fin_sent and not send:
            out.append(encode_header(TYPE_WINDOW_UPDATE, FLAG_FIN, stream_id, 0))
            self._fin_sent = True
        if self._protocol_paused and self._send_size <= self._low:
            self._protocol_paused = False
            if self._protocol is not None:
                try:
                    self._protocol.resume_writing()
                except Exception:
                    logger.exception("resume_writing() of %r failed", self._protocol)
        if self._fin_sent:
            self._maybe_done()

    def _on_window_update(self, delta: int) -> None:
        self._window.add_send(delta)
        if self._send:
            self._session._stream_ready(self)

    # -- closing -------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing or self._fin_wanted or self._done

    def close(self) -> None:
        """Send FIN after the queued data, stop receiving; gone once the peer closes too."""
        if self._closing or self._done:
            return
        self._closing = True
        if self._recv:
            self._session._window_update(
                self.stream_id, self._window.consume(sum(map(len, self._recv)))
            )
            self._recv.clear()
        self.write_eof()
        timeout = self._session.config.stream_close_timeout
        if timeout is not None and not self._remote_fin:
            self._cancel_timer()
            self._timer = self._session._loop.call_later(timeout, self._close_timed_out)
        self._maybe_done()

    def abort(self) -> None:
        """Reset the stream (RST): queued data in both directions is dropped."""
        self.reset()

    def reset(self, exc: BaseException | None = None) -> None:
        if self._done:
            return
        self._session._send_reset(self.stream_id)
        self._finish(exc)

    def _close_timed_out(self) -> None:
        self._timer = None
        self.reset()

    def _open_timed_out(self) -> None:
        self._timer = None
        self.reset(
            StreamOpenTimeoutError(
                f"stream {self.stream_id} was not acknowledged within "
                f"{self._session.config.stream_open_timeout} s"
            )
        )

    def _on_ack(self) -> None:
        if not self._acked:
            self._acked = True
            if not self._closing:
                self._cancel_timer()
            self._session._stream_acked()

    def _on_remote_reset(self) -> None:
        self._finish(StreamResetError(f"stream {self.stream_id} was reset by the peer"))

    def _protocol_failed(self, exc: Exception) -> None:
        logger.error(
            "protocol on stream %d raised; resetting the stream", self.stream_id, exc_info=exc
        )
        self.reset(exc)

    def _maybe_done(self) -> None:
        if (
            not self._done
            and self._fin_sent
            and self._remote_fin
            and (self._eof_delivered or self._protocol is None)
        ):
            self._finish(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self, exc: BaseException | None) -> None:
        """Remove the stream for good and tell the protocol, exactly once."""
        if self._done:
            return
        self._done = True
        self._cancel_timer()
        self._recv.clear()
        self._send.clear()
        self._send_size = 0
        self._session._stream_finished(self)
        if self._protocol is not None:
            self._session._loop.call_soon(self._protocol.connection_lost, exc)
