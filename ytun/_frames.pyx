# cython: language_level=3, embedsignature=True
# cython: boundscheck=False, wraparound=False, cdivision=True
"""The yamux frame codec and flow-control windows, compiled.

``ytun/_frames_py.py`` is the pure-Python twin with the same API. Lengths are checked
explicitly before every buffer access, which is why bounds checking is off.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from ytun._const import DEFAULT_MAX_PAYLOAD
from ytun._const import INITIAL_WINDOW as _INITIAL_WINDOW_PY
from ytun.errors import ProtocolError

__all__ = ["DEFAULT_MAX_PAYLOAD", "FlowWindow", "FrameParser", "decode_header", "encode_frame",
           "encode_header"]

cdef enum:
    HEADER_SIZE = 12
    TYPE_DATA = 0
    TYPE_WINDOW_UPDATE = 1
    TYPE_PING = 2
    TYPE_GO_AWAY = 3
    INITIAL_WINDOW = 262144

cdef long long MAX_WINDOW = 0xFFFFFFFF

assert _INITIAL_WINDOW_PY == INITIAL_WINDOW


cdef inline void _put_header(char *out, uint8_t frame_type, uint16_t flags,
                             uint32_t stream_id, uint32_t length) noexcept:
    out[0] = 0
    out[1] = <char>frame_type
    out[2] = <char>(flags >> 8)
    out[3] = <char>flags
    out[4] = <char>(stream_id >> 24)
    out[5] = <char>(stream_id >> 16)
    out[6] = <char>(stream_id >> 8)
    out[7] = <char>stream_id
    out[8] = <char>(length >> 24)
    out[9] = <char>(length >> 16)
    out[10] = <char>(length >> 8)
    out[11] = <char>length


cdef inline uint32_t _u32(const unsigned char *p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _check_fields(long long frame_type, long long flags, long long stream_id,
                               long long length) except *:
    if not 0 <= frame_type <= 0xFF or not 0 <= flags <= 0xFFFF:
        raise ValueError("frame type or flags out of range")
    if not 0 <= stream_id <= 0xFFFFFFFF or not 0 <= length <= 0xFFFFFFFF:
        raise ValueError("stream id or length out of range")


def encode_header(long long frame_type, long long flags, long long stream_id,
                  long long length):
    """The 12-byte big-endian header of one frame."""
    _check_fields(frame_type, flags, stream_id, length)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE)
    _put_header(PyBytes_AS_STRING(out), <uint8_t>frame_type, <uint16_t>flags,
                <uint32_t>stream_id, <uint32_t>length)
    return out


def encode_frame(long long frame_type, long long flags, long long stream_id,
                 const unsigned char[::1] payload):
    """Header and payload joined into one ``bytes`` (for small frames)."""
    cdef Py_ssize_t size = payload.shape[0]
    _check_fields(frame_type, flags, stream_id, size)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + size)
    cdef char *buf = PyBytes_AS_STRING(out)
    _put_header(buf, <uint8_t>frame_type, <uint16_t>flags, <uint32_t>stream_id,
                <uint32_t>size)
    if size:
        memcpy(buf + HEADER_SIZE, &payload[0], size)
    return out


def decode_header(data):
    """``(version, type, flags, stream_id, length)`` from the first 12 bytes of ``data``."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    cdef const unsigned char *p = <const unsigned char *>view.buf
    try:
        if view.len < HEADER_SIZE:
            raise ValueError(f"a yamux header needs {HEADER_SIZE} bytes, got {view.len}")
        return (p[0], p[1], (p[2] << 8) | p[3], _u32(p + 4), _u32(p + 8))
    finally:
        PyBuffer_Release(&view)


cdef class FrameParser:
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

    cdef object _on_data, _on_window_update, _on_ping, _on_go_away
    cdef uint32_t _max_payload
    cdef Py_ssize_t _max_frames
    cdef unsigned char _head[HEADER_SIZE]
    cdef Py_ssize_t _head_len
    # A payload that spans chunks is assembled in place in a fresh bytes object.
    cdef bytes _body
    cdef Py_ssize_t _body_len, _body_filled
    cdef uint32_t _stream_id
    cdef uint16_t _flags
    cdef bint _failed

    def __init__(self, handler, long long max_payload=DEFAULT_MAX_PAYLOAD,
                 Py_ssize_t max_frames=0):
        if not 0 <= max_payload <= MAX_WINDOW:
            raise ValueError("max_payload out of range")
        if max_frames < 0:
            raise ValueError("max_frames must be 0 (no limit) or positive")
        self._max_frames = max_frames
        self._on_data = handler.on_data
        self._on_window_update = handler.on_window_update
        self._on_ping = handler.on_ping
        self._on_go_away = handler.on_go_away
        self._max_payload = <uint32_t>max_payload
        self._head_len = 0
        self._body = None
        self._failed = False

    @property
    def buffered(self):
        """Bytes held for an incomplete header or payload."""
        return self._head_len + (self._body_filled if self._body is not None else 0)

    def feed(self, data):
        """Parse ``data``; answers the bytes taken (all of them unless ``max_frames``
        frames were dispatched first: then the caller feeds the rest later)."""
        if self._failed:
            raise ProtocolError("the frame parser stopped after an earlier error")
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._feed(<const unsigned char *>view.buf, view.len)
        except BaseException:
            self._failed = True
            raise
        finally:
            PyBuffer_Release(&view)

    cdef Py_ssize_t _feed(self, const unsigned char *data, Py_ssize_t end) except -1:
        cdef Py_ssize_t pos = 0, take, need, frames = 0
        cdef Py_ssize_t budget = self._max_frames if self._max_frames else PY_SSIZE_T_MAX
        cdef bytes payload
        if self._body is not None:
            take = self._body_len - self._body_filled
            if take > end:
                take = end
            memcpy(PyBytes_AS_STRING(self._body) + self._body_filled, data, take)
            self._body_filled += take
            pos = take
            if self._body_filled < self._body_len:
                return end
            payload = self._body
            self._body = None
            frames = 1
            self._on_data(self._stream_id, self._flags, payload)
        if self._head_len:
            need = HEADER_SIZE - self._head_len
            if end - pos < need:
                memcpy(self._head + self._head_len, data + pos, end - pos)
                self._head_len += end - pos
                return end
            memcpy(self._head + self._head_len, data + pos, need)
            self._head_len = 0
            frames += 1
            pos = self._frame(self._head, data, pos + need, end)
        while end - pos >= HEADER_SIZE:
            if frames >= budget:
                return pos  # the rest waits for the next loop turn
            frames += 1
            pos = self._frame(data + pos, data, pos + HEADER_SIZE, end)
        if pos < end:
            memcpy(self._head, data + pos, end - pos)
            self._head_len = end - pos
        return end

    cdef Py_ssize_t _frame(self, const unsigned char *header, const unsigned char *data,
                           Py_ssize_t pos, Py_ssize_t end) except -1:
        """Dispatch the frame whose header is given and whose body starts at ``pos``."""
        cdef uint8_t frame_type = header[1]
        cdef uint16_t flags = (header[2] << 8) | header[3]
        cdef uint32_t stream_id = _u32(header + 4)
        cdef uint32_t length = _u32(header + 8)
        if header[0] != 0:
            raise ProtocolError(f"unsupported yamux version {header[0]}")
        if frame_type == TYPE_DATA or frame_type == TYPE_WINDOW_UPDATE:
            if stream_id == 0:
                raise ProtocolError("data or window update frame on stream 0")
            if frame_type == TYPE_WINDOW_UPDATE:
                self._on_window_update(stream_id, flags, length)
                return pos
            if length > self._max_payload:
                raise ProtocolError(f"data frame of {length} bytes exceeds the "
                                    f"{self._max_payload}-byte limit")
            if end - pos >= length:
                self._on_data(stream_id, flags,
                              PyBytes_FromStringAndSize(<const char *>data + pos, length))
                return pos + length
            self._body = PyBytes_FromStringAndSize(NULL, length)
            memcpy(PyBytes_AS_STRING(self._body), data + pos, end - pos)
            self._body_len = length
            self._body_filled = end - pos
            self._stream_id = stream_id
            self._flags = flags
            return end
        if frame_type == TYPE_PING or frame_type == TYPE_GO_AWAY:
            if stream_id != 0:
                raise ProtocolError("ping or go away frame on a stream other than 0")
            if frame_type == TYPE_PING:
                self._on_ping(flags, length)
            else:
                self._on_go_away(length)
            return pos
        raise ProtocolError(f"unknown frame type {frame_type}")


cdef class FlowWindow:
    """Send and receive windows of one stream.

    Send side: ``send_credit`` is what the peer allows us to send; ``take_send`` spends
    it and ``add_send`` adds a peer's window update. Receive side: ``recv_credit`` is what
    the peer may still send; ``receive`` accounts arriving data and ``consume`` returns
    credit as the application takes it, answering the delta of the window update to send
    (0 until at least half the window is reclaimable).
    """

    cdef public uint64_t send_credit
    cdef public uint64_t recv_credit
    cdef public uint64_t buffered
    cdef public uint64_t recv_window

    def __init__(self, long long recv_window=INITIAL_WINDOW):
        if not INITIAL_WINDOW <= recv_window <= MAX_WINDOW:
            raise ValueError(f"recv_window must be within {INITIAL_WINDOW}..{MAX_WINDOW}")
        self.send_credit = INITIAL_WINDOW
        self.recv_credit = INITIAL_WINDOW
        self.buffered = 0
        self.recv_window = recv_window

    cpdef uint64_t take_send(self, uint64_t wanted):
        cdef uint64_t granted = wanted if wanted < self.send_credit else self.send_credit
        self.send_credit -= granted
        return granted

    cpdef add_send(self, uint64_t delta):
        cdef uint64_t credit = self.send_credit + delta
        if credit > <uint64_t>MAX_WINDOW:
            raise ProtocolError("window update overflows the send window")
        self.send_credit = credit

    cpdef receive(self, uint64_t size):
        if size > self.recv_credit:
            raise ProtocolError(f"peer sent {size} bytes beyond a receive window of "
                                f"{self.recv_credit}")
        self.recv_credit -= size
        self.buffered += size

    cpdef uint64_t consume(self, long long size) except? 0xFFFFFFFFFFFFFFFF:
        if not 0 <= size <= <long long>self.buffered:
            raise ValueError(f"cannot consume {size} of {self.buffered} buffered bytes")
        self.buffered -= size
        return self.update(False)

    cpdef uint64_t receive_consumed(self, uint64_t size) except? 0xFFFFFFFFFFFFFFFF:
        """``receive`` then ``consume`` in one call, for data handed straight on."""
        if size > self.recv_credit:
            raise ProtocolError(f"peer sent {size} bytes beyond a receive window of "
                                f"{self.recv_credit}")
        self.recv_credit -= size
        return self.update(False)

    cpdef uint64_t update(self, bint force):
        """Grant back reclaimable credit if it is at least half the window (or ``force``)."""
        cdef long long reclaim = (<long long>self.recv_window - <long long>self.buffered
                                  - <long long>self.recv_credit)
        if reclaim <= 0 or (not force and reclaim < <long long>(self.recv_window // 2)):
            return 0
        self.recv_credit += reclaim
        return reclaim
