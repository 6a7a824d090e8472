"""The yamux state machine without I/O: bytes in, events and frames out.

:class:`Multiplexer` owns the frame parser, the stream table, stream IDs, the unacknowledged
opens, the accept backlog and the outgoing frames of the current loop turn. It never
touches a socket, a loop or a future: everything it needs from the outside world goes
through :class:`Hooks`, which :class:`~ytun.yamux.session.Session` implements on asyncio
and the core tests implement with plain lists.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

from .._const import (
    FLAG_ACK,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_NORMAL,
    INITIAL_WINDOW,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
)
from ..errors import ProtocolError, StreamLimitError, StreamsExhaustedError
from .config import Config
from .stream import Stream, StreamState

LAST_STREAM_ID = 0xFFFFFFFD


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Hooks(Protocol):
    """What the core asks of its owner (the asyncio Session, or a test)."""

    #: What streams report as ``get_extra_info("session")``.
    session: Any

    def call_soon(self, callback: Callable[..., object], *args: Any) -> object:
        """Run ``callback`` later in this loop turn's aftermath (protocol callbacks)."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:
        """Run ``callback`` after ``delay`` seconds (stream open and close timeouts)."""

    def output_ready(self) -> None:
        """Frames are waiting: collect them with :meth:`Multiplexer.take_output` soon."""

    def inbound_stream(self, stream: Stream) -> None:
        """The peer opened ``stream``: attach a protocol or queue it for an acceptor."""

    def open_slot_freed(self) -> None:
        """An opened stream was acknowledged (or ended): one more open may proceed."""

    def pong_received(self, value: int) -> None:
        """The peer answered our ping ``value``."""

    def go_away_received(self, code: int) -> None:
        """The peer sent Go Away with ``code``."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Transport information for streams' ``get_extra_info``."""


class Multiplexer:
    """One end of a yamux connection, as a state machine.

    Feed received bytes to :meth:`feed` (raises :class:`ProtocolError` when the peer
    breaks the protocol; the caller then sends Go Away and stops). Collect the frames to
    send with :meth:`take_output` once per loop turn: control frames first, then about one
    data frame per ready stream per round, round robin.
    """

    def __init__(
        self,
        *,
        client: bool,
        config: Config,
        codec: ModuleType,
        hooks: Hooks,
        backlog: bool,
    ) -> None:
        self.config = config
        self.hooks = hooks
        self.encode_header = codec.encode_header
        self._flow_window = codec.FlowWindow
        self._parser = codec.FrameParser(self, config.max_recv_payload, config.frame_budget)
        self.streams: dict[int, Stream] = {}
        self._stream_for = self.streams.get
        self._next_id = 1 if client else 2
        self._remote_parity = 0 if client else 1
        #: Inbound streams kept for an acceptor (only when ``backlog`` is on).
        self.backlog: deque[Stream] = deque()
        self._uses_backlog = backlog
        # Outbound streams whose SYN the peer has not answered yet (hashicorp's "inflight").
        self._inflight: set[int] = set()
        self._control: list[bytes] = []
        self.control_bytes = 0
        #: Set once the owner gives up on the peer: further replies are dropped.
        self.replies_dropped = False
        self._ready: dict[Stream, None] = {}
        self._pongs_queued = 0
        self.local_go_away = False
        self.remote_go_away = False
        #: Set by the owner when the session is over: inbound streams are refused.
        self.closed = False

    # -- input ----------------------------------------------------------------------------

    def feed(self, data: Any) -> int:
        """Parse ``data`` and act on its whole frames, up to ``config.frame_budget`` of
        them; answers the bytes taken (feed the rest again later)."""
        taken: int = self._parser.feed(data)
        return taken

    def on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not flags:  # the hot path: one lookup, one call
            stream = self._stream_for(stream_id)
            if stream is not None and payload:  # else unknown or finished, or empty
                stream.on_payload(payload)
            return
        stream = self.streams.get(stream_id)
        if flags & FLAG_SYN:
            if len(payload) > INITIAL_WINDOW:  # more than the opener can have credit for
                raise ProtocolError(
                    f"peer opened stream {stream_id} with {len(payload)} "
                    "bytes, beyond the initial window"
                )
            stream = self._inbound(stream_id, flags)
        if stream is not None:
            stream.on_data(flags, payload)

    def on_window_update(self, stream_id: int, flags: int, delta: int) -> None:
        stream = self.streams.get(stream_id)
        if flags & FLAG_SYN:
            stream = self._inbound(stream_id, flags)
        if stream is not None:
            stream.on_window_update(flags, delta)

    def on_ping(self, flags: int, value: int) -> None:
        if flags & FLAG_SYN:
            if self._pongs_queued < self.config.pong_backlog:
                self._pongs_queued += 1
                self.queue_control(self.encode_header(TYPE_PING, FLAG_ACK, 0, value))
        else:
            self.hooks.pong_received(value)

    def on_go_away(self, code: int) -> None:
        if code == GO_AWAY_NORMAL:
            self.remote_go_away = True  # the streams open now may finish
        self.hooks.go_away_received(code)

    def _inbound(self, stream_id: int, flags: int) -> Stream | None:
        if stream_id & 1 != self._remote_parity:
            raise ProtocolError(f"peer opened stream {stream_id}, which has our parity")
        if stream_id in self.streams:
            raise ProtocolError(f"peer opened stream {stream_id} twice")
        if flags & FLAG_RST:
            return None  # opened and reset at once: nothing to surface
        config = self.config
        if (
            self.local_go_away
            or self.closed
            or len(self.streams) >= config.max_streams
            or (self._uses_backlog and len(self.backlog) >= config.accept_backlog)
        ):
            self.send_reset(stream_id)
            return None
        window = self._flow_window(config.recv_window)
        stream = Stream(self, stream_id, window, StreamState.SYN_RECEIVED)
        self.streams[stream_id] = stream
        # Acknowledge at once: hashicorp peers kill the session after 75 s without an ACK.
        self.queue_control(
            self.encode_header(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, window.update(True))
        )
        stream.ack_sent()
        self.hooks.inbound_stream(stream)
        return None if stream.finished else stream

    # -- streams --------------------------------------------------------------------------

    def open_stream(self) -> Stream:
        """Register a new outbound stream and queue its SYN (no protocol attached yet)."""
        config = self.config
        if len(self._inflight) >= config.max_unacked_streams:
            raise StreamLimitError(f"{len(self._inflight)} streams are not yet acknowledged")
        if len(self.streams) >= config.max_streams:
            raise StreamLimitError(f"session holds its maximum of {config.max_streams} streams")
        stream_id = self._next_id
        if stream_id > LAST_STREAM_ID:
            raise StreamsExhaustedError("no stream IDs left on this session")
        self._next_id += 2
        window = self._flow_window(config.recv_window)
        stream = Stream(self, stream_id, window, StreamState.INIT)
        self.streams[stream_id] = stream
        self._inflight.add(stream_id)
        self.queue_control(
            self.encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id, window.update(True))
        )
        stream.syn_sent(config.stream_open_timeout)
        return stream

    @property
    def unacked(self) -> int:
        """Outbound streams the peer has not acknowledged yet."""
        return len(self._inflight)

    def stream_acked(self, stream: Stream) -> bool:
        """The peer answered ``stream``'s SYN; True if it was still waiting for that."""
        if stream.stream_id in self._inflight:
            self._inflight.discard(stream.stream_id)
            self.hooks.open_slot_freed()
            return True
        return False

    def stream_finished(self, stream: Stream) -> None:
        """``stream`` is gone for good: forget it everywhere."""
        self.streams.pop(stream.stream_id, None)
        self._ready.pop(stream, None)
        self.stream_acked(stream)
        if stream.get_protocol() is None:
            try:
                self.backlog.remove(stream)
            except ValueError:
                pass

    def close_all(self, error: BaseException | None) -> None:
        """End every stream with ``error`` and drop everything queued."""
        self.closed = True
        for stream in list(self.streams.values()):
            stream.session_ended(error)
        self.backlog.clear()
        self._ready.clear()
        self._control.clear()
        self.control_bytes = 0

    # -- output ---------------------------------------------------------------------------

    def queue_control(self, frame: bytes) -> None:
        if self.replies_dropped:
            return  # the owner is failing the session; the rest of this read gets no reply
        self._control.append(frame)
        self.control_bytes += len(frame)
        self.hooks.output_ready()

    def window_update(self, stream_id: int, delta: int) -> None:
        if delta:
            self.queue_control(self.encode_header(TYPE_WINDOW_UPDATE, 0, stream_id, delta))

    def send_reset(self, stream_id: int) -> None:
        self.queue_control(self.encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))

    def send_ping(self, value: int) -> None:
        self.queue_control(self.encode_header(TYPE_PING, FLAG_SYN, 0, value))

    def go_away_frame(self, code: int) -> bytes:
        return self.encode_header(TYPE_GO_AWAY, 0, 0, code)

    def stream_ready(self, stream: Stream) -> None:
        """``stream`` has data or a FIN to send."""
        self._ready[stream] = None
        self.hooks.output_ready()

    @property
    def has_output(self) -> bool:
        return bool(self._control or self._ready)

    def take_output(self, data: bool = True) -> list[Any]:
        """The frames to write now: control frames, then (if ``data``) stream data."""
        out: list[Any] = self._control
        self._control = []
        self.control_bytes = 0
        self._pongs_queued = 0
        if data and self._ready:
            ready = self._ready
            self._ready = {}
            encode_header = self.encode_header
            max_payload = self.config.max_frame_payload
            # Round robin, about one frame per stream per turn: a bulk stream delays the
            # others' frames by one frame each, not by its whole window.
            streams = list(ready)
            while streams:
                streams = [stream for stream in streams if stream.wants_emit()]
                for stream in streams:
                    stream.emit(out, encode_header, max_payload)
        return out
