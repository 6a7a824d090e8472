"""Awaitable streams for tests and casual use: ``read`` / ``write`` / ``drain`` / ``close``.

The data path of the tunnel does not use this layer; it attaches Protocols directly.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .session import Session
from .stream import Stream


class StreamConnection(asyncio.Protocol):
    """A yamux stream with coroutine reads and writes. Reading pauses the peer when full."""

    def __init__(self, limit: int = 256 * 1024) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.stream: Stream

    # protocol side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stream = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= self._limit:
            self.stream.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # the writer decides when to close its half

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake_reader()
        for waiter in (self._drain_waiter,):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _wake_reader(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    # user side

    @property
    def stream_id(self) -> int:
        return self.stream.stream_id

    async def _wait_data(self) -> None:
        if self._error is not None and not self._chunks:
            raise self._error
        self._data_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._data_waiter
        finally:
            self._data_waiter = None

    def _take(self, size: int) -> bytes:
        parts = []
        while size and self._chunks:
            chunk = self._chunks[0]
            if len(chunk) <= size:
                parts.append(self._chunks.popleft())
                size -= len(chunk)
            else:
                parts.append(chunk[:size])
                self._chunks[0] = chunk[size:]
                size = 0
        data = b"".join(parts)
        self._size -= len(data)
        if self._size < self._limit:
            self.stream.resume_reading()
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (everything until EOF if ``n`` < 0); ``b""`` at EOF."""
        if n >= 0:
            while not self._chunks and not self._eof:
                await self._wait_data()
            if not self._chunks and self._error is not None:
                raise self._error
            return self._take(n)
        parts = []
        while True:
            parts.append(self._take(self._size))  # taking resumes a paused peer
            if self._eof:
                break
            await self._wait_data()
        if self._error is not None:
            raise self._error
        return b"".join(parts)

    async def readexactly(self, n: int) -> bytes:
        parts = []
        got = 0
        while True:
            part = self._take(min(n - got, self._size))
            parts.append(part)
            got += len(part)
            if got == n:
                return b"".join(parts)
            if self._eof:
                if self._error is not None:
                    raise self._error
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            await self._wait_data()

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    async def drain(self) -> None:
        if self._error is not None:
            raise self._error
        if self._paused and not self._closed.done():
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
            if self._error is not None:
                raise self._error

    def write_eof(self) -> None:
        self.stream.write_eof()

    def close(self) -> None:
        self.stream.close()

    def reset(self) -> None:
        self.stream.reset()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


async def open_connection(session: Session, limit: int = 256 * 1024) -> StreamConnection:
    """Open a stream on ``session`` and return its awaitable wrapper."""
    _, connection = await session.open_stream(lambda: StreamConnection(limit))
    return connection


async def accept_connection(session: Session, limit: int = 256 * 1024) -> StreamConnection:
    """Wait for the peer's next stream and return its awaitable wrapper."""
    _, connection = await session.accept_stream(lambda: StreamConnection(limit))
    return connection
