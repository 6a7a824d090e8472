"""Pure-Python twin of ``ytun._frames``: the yamux frame codec and flow-control windows.

Same names, signatures and behaviour as the compiled module; ``YTUN_NO_EXTENSIONS=1``
selects it. Keep the two in step: the test suite runs every case against both.
"""

from __future__ import annotations

import struct
from typing import Any

from ._const import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_WINDOW,
    PROTO_VERSION,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
)
from .errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "FlowWindow",
    "FrameParser",
    "decode_header",
    "encode_frame",
    "encode_header",
]

_HEADER = struct.Struct(">BBHII")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 12-byte big-endian header of one frame."""
    if not 0 <= frame_type <= 0xFF or not 0 <= flags <= 0xFFFF:
        raise ValueError("frame type or flags out of range")
    if not 0 <= stream_id <= 0xFFFFFFFF or not 0 <= length <= 0xFFFFFFFF:
        raise ValueError("stream id or length out of range")
    return _pack_header(PROTO_VERSION, frame_type, flags, stream_id, length)


def encode_frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """Header and payload joined into one ``bytes`` (for small frames)."""
    return encode_header(frame_type, flags, stream_id, len(payload)) + payload


def decode_header(data: Any) -> tuple[int, int, int, int, int]:
    """``(version, type, flags, stream_id, length)`` from the first 12 bytes of ``data``."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"a yamux header needs {HEADER_SIZE} bytes, got {len(data)}")
    return _unpack_header(data)


class FrameParser:
    """Incremental parser: feed it chunks of any size, it calls the handler once per frame.

    The handler provides ``on_data(stream_id, flags, payload)``,
    ``on_window_update(stream_id, flags, delta)``, ``on_ping(flags, value)`` and
    ``on_go_away(code)``. A violation raises :class:`ProtocolError`; after any error the
    parser refuses further input, since the byte stream can no longer be trusted.

    ``max_frames`` (0: no limit) bounds the frames one :meth:`feed` dispatches, so that a
    peer flooding tiny frames cannot hold the event loop for a whole read: ``feed`` stops
    at a frame boundary and answers how many bytes it took; the caller feeds the rest on
    a later loop turn.
    """

    __slots__ = (
        "_max_frames",
        "_on_data",
        "_on_window_update",
        "_on_ping",
        "_on_go_away",
        "_max_payload",
        "_head",
        "_parts",
        "_missing",
        "_stream_id",
        "_flags",
        "_failed",
    )

    def __init__(
        self, handler: Any, max_payload: int = DEFAULT_MAX_PAYLOAD, max_frames: int = 0
    ) -> None:
        if not 0 <= max_payload <= MAX_WINDOW:
            raise ValueError("max_payload out of range")
        if max_frames < 0:
            raise ValueError("max_frames must be 0 (no limit) or positive")
        self._max_frames = max_frames
        self._on_data = handler.on_data
        self._on_window_update = handler.on_window_update
        self._on_ping = handler.on_ping
        self._on_go_away = handler.on_go_away
        self._max_payload = max_payload
        self._head = b""
        self._parts: list[bytes] = []
        self._missing = 0
        self._stream_id = 0
        self._flags = 0
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete header or payload."""
        return len(self._head) + sum(map(len, self._parts))

    def feed(self, data: Any) -> int:
        """Parse ``data``; answers the bytes taken (all of them unless ``max_frames``
        frames were dispatched first: then the caller feeds the rest later)."""
        if self._failed:
            raise ProtocolError("the frame parser stopped after an earlier error")
        try:
            return self._feed(memoryview(data).cast("B"))
        except BaseException:
            self._failed = True
            raise

    def _feed(self, data: memoryview) -> int:
        pos = 0
        end = len(data)
        frames = 0
        budget = self._max_frames or end + 1  # a frame takes at least one byte
        if self._missing:
            take = min(self._missing, end)
            self._parts.append(bytes(data[:take]))
            self._missing -= take
            pos = take
            if self._missing:
                return end
            payload = b"".join(self._parts)
            self._parts = []
            frames = 1
            self._on_data(self._stream_id, self._flags, payload)
        if self._head:
            need = HEADER_SIZE - len(self._head)
            if end - pos < need:
                self._head += bytes(data[pos:])
                return end
            header = self._head + bytes(data[pos : pos + need])
            self._head = b""
            frames += 1
            pos = self._frame(_unpack_header(header), data, pos + need, end)
        while end - pos >= HEADER_SIZE:
            if frames >= budget:
                return pos  # the rest waits for the next loop turn
            frames += 1
            pos = self._frame(_unpack_header(data, pos), data, pos + HEADER_SIZE, end)
        if pos < end:
            self._head = bytes(data[pos:])
        return end

    def _frame(
        self, header: tuple[int, int, int, int, int], data: memoryview, pos: int, end: int
    ) -> int:
        """Dispatch the frame whose header is given and whose body starts at ``pos``."""
        version, frame_type, flags, stream_id, length = header
        if version != PROTO_VERSION:
            raise ProtocolError(f"unsupported yamux version {version}")
        if frame_type in (TYPE_DATA, TYPE_WINDOW_UPDATE):
            if stream_id == 0:
                raise ProtocolError("data or window update frame on stream 0")
            if frame_type == TYPE_WINDOW_UPDATE:
                self._on_window_update(stream_id, flags, length)
                return pos
            if length > self._max_payload:
                raise ProtocolError(
                    f"data frame of {length} bytes exceeds the {self._max_payload}-byte limit"
                )
            if end - pos >= length:
                self._on_data(stream_id, flags, bytes(data[pos : pos + length]))
                return pos + length
            self._parts = [bytes(data[pos:end])]
            self._missing = length - (end - pos)
            self._stream_id = stream_id
            self._flags = flags
            return end
        if frame_type in (TYPE_PING, TYPE_GO_AWAY):
            if stream_id != 0:
                raise ProtocolError("ping or go away frame on a stream other than 0")
            if frame_type == TYPE_PING:
                self._on_ping(flags, length)
            else:
                self._on_go_away(length)
            return pos
        raise ProtocolError(f"unknown frame type {frame_type}")


class FlowWindow:
    """Send and receive windows of one stream.

    Send side: ``send_credit`` is what the peer allows us to send; ``take_send`` spends
    it and ``add_send`` adds a peer's window update. Receive side: ``recv_credit`` is what
    the peer may still send; ``receive`` accounts arriving data and ``consume`` returns
    credit as the application takes it, answering the delta of the window update to send
    (0 until at least half the window is reclaimable).
    """

    __slots__ = ("send_credit", "recv_credit", "buffered", "recv_window")

    def __init__(self, recv_window: int = INITIAL_WINDOW) -> None:
        if not INITIAL_WINDOW <= recv_window <= MAX_WINDOW:
            raise ValueError(f"recv_window must be within {INITIAL_WINDOW}..{MAX_WINDOW}")
        self.send_credit = INITIAL_WINDOW
        self.recv_credit = INITIAL_WINDOW
        self.buffered = 0
        self.recv_window = recv_window

    def take_send(self, wanted: int) -> int:
        granted = wanted if wanted < self.send_credit else self.send_credit
        self.send_credit -= granted
        return granted

    def add_send(self, delta: int) -> None:
        credit = self.send_credit + delta
        if credit > MAX_WINDOW:
            raise ProtocolError("window update overflows the send window")
        self.send_credit = credit

    def receive(self, size: int) -> None:
        if size > self.recv_credit:
            raise ProtocolError(
                f"peer sent {size} bytes beyond a receive window of {self.recv_credit}"
            )
        self.recv_credit -= size
        self.buffered += size

    def consume(self, size: int) -> int:
        if not 0 <= size <= self.buffered:
            raise ValueError(f"cannot consume {size} of {self.buffered} buffered bytes")
        self.buffered -= size
        return self.update(False)

    def receive_consumed(self, size: int) -> int:
        """``receive`` then ``consume`` in one call, for data handed straight on."""
        if size > self.recv_credit:
            raise ProtocolError(
                f"peer sent {size} bytes beyond a receive window of {self.recv_credit}"
            )
        self.recv_credit -= size
        return self.update(False)

    def update(self, force: bool) -> int:
        """Grant back reclaimable credit if it is at least half the window (or ``force``)."""
        reclaim = self.recv_window - self.buffered - self.recv_credit
        if reclaim <= 0 or (not force and reclaim < self.recv_window // 2):
            return 0
        self.recv_credit += reclaim
        return reclaim
