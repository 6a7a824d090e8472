"""Protocols for tunnel streams: a byte pipe joining two transports (a tunnel stream and a
socket), and one that ends a stream nobody wants.

Bytes are passed on as they arrive; EOF on one side becomes a half-close (FIN) on the
other; a side that cannot keep up pauses reading on the other. Both sides are closed once
both directions have ended.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger("ytun.splice")


class Pipe:
    """Two transports joined both ways. Until both exist, the first one is not read."""

    __slots__ = ("_transports", "_eof", "_closed", "_early", "sides")

    def __init__(self) -> None:
        self._transports: list[asyncio.Transport | None] = [None, None]
        self._eof = [False, False]
        self._closed = False
        # Bytes the first side delivered before the second existed. pause_reading() inside
        # connection_made is a no-op on uvloop (it starts reading right after), so they
        # can arrive anyway and must not be dropped.
        self._early: list[bytes] = []
        self.sides = (PipeEnd(self, 0), PipeEnd(self, 1))

    def _made(self, side: int, transport: asyncio.Transport) -> None:
        self._transports[side] = transport
        other = self._transports[1 - side]
        if other is None and not self._closed:
            transport.pause_reading()
            return
        if self._early:
            transport.writelines(self._early)
            self._early.clear()
        if self._eof[1 - side]:  # the first side's EOF came before this side existed
            _end_writing(transport)
        if other is None:  # the first side is already gone: pass on its end
            transport.close()
        elif not other.is_closing():
            other.resume_reading()

    def _data(self, side: int, data: bytes) -> None:
        other = self._transports[1 - side]
        if other is not None:
            other.write(data)
        else:
            self._early.append(data)
            transport = self._transports[side]
            if transport is not None:
                transport.pause_reading()

    def _eof_received(self, side: int) -> None:
        self._eof[side] = True
        other = self._transports[1 - side]
        if other is not None and not other.is_closing():
            _end_writing(other)
        if all(self._eof):
            self.close()

    def _lost(self, side: int, exc: BaseException | None) -> None:
        self._transports[side] = None
        other = self._transports[1 - side]
        if other is None:
            self._closed = True  # close the other side as soon as it arrives
        else:
            if exc is None:
                other.close()
            else:
                other.abort()

    def _pause(self, side: int, paused: bool) -> None:
        other = self._transports[1 - side]
        if other is not None and not other.is_closing():
            if paused:
                other.pause_reading()
            else:
                other.resume_reading()

    def close(self) -> None:
        for transport in self._transports:
            if transport is not None:
                transport.close()

    def abort(self) -> None:
        for transport in self._transports:
            if transport is not None:
                transport.abort()


def _end_writing(transport: asyncio.Transport) -> None:
    """Half-close ``transport`` (FIN), or close it where half-close does not exist."""
    try:
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
    except OSError:
        # The stock loop's write_eof() calls shutdown(), which fails (ENOTCONN) once the
        # peer has reset the connection before the loop noticed: nothing is left to end.
        transport.abort()


class PipeEnd(asyncio.Protocol):
    """The protocol on one side of a :class:`Pipe`."""

    __slots__ = ("_pipe", "_side")

    def __init__(self, pipe: Pipe, side: int) -> None:
        self._pipe = pipe
        self._side = side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._pipe._made(self._side, transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._pipe._data(self._side, data)

    def eof_received(self) -> bool:
        self._pipe._eof_received(self._side)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._pipe._lost(self._side, exc)

    def pause_writing(self) -> None:
        self._pipe._pause(self._side, True)

    def resume_writing(self) -> None:
        self._pipe._pause(self._side, False)


class CloseAtOnce(asyncio.Protocol):
    """Ends a stream nobody wants: a request that timed out, an unknown protocol number.
    Taking the stream at all keeps the FIFO matching of streams to requests in step."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # whatever is still in flight is dropped
