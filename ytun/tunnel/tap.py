"""A pipe that lets an observer see a copy of the bytes it passes, for the client's
request inspector.

The client installs it only when an inspector is given: without one, streams use the
plain :class:`~ytun.tunnel.splice.Pipe` and pay nothing. The observer is told about each
chunk after it has been passed on, and an observer that raises is dropped for the rest of
the stream: watching must never break the tunnel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from .splice import Pipe

logger = logging.getLogger("ytun.tap")


class StreamObserver(Protocol):
    """Sees one tunnel stream joined to a local service."""

    def local_connected(self, address: Any) -> None:
        """The local service was dialed; ``address`` is its peer name."""

    def request_data(self, data: bytes) -> None:
        """Bytes from the tunnel to the local service."""

    def response_data(self, data: bytes) -> None:
        """Bytes from the local service to the tunnel."""

    def response_eof(self) -> None:
        """The local service ended its side."""

    def closed(self) -> None:
        """The stream is over."""


class StreamTaps(Protocol):
    """Gives an observer for each new HTTP or WebSocket stream, or None to leave it be."""

    def observe(self, protocol: int, local_port: int) -> StreamObserver | None: ...


class TappedPipe(Pipe):
    """A :class:`Pipe` whose side 0 is the tunnel stream and side 1 the local service."""

    __slots__ = ("_observer",)

    def __init__(self, observer: StreamObserver) -> None:
        super().__init__()
        self._observer: StreamObserver | None = observer

    def _made(self, side: int, transport: asyncio.Transport) -> None:
        super()._made(side, transport)
        if side == 1:
            self._tell("local_connected", transport.get_extra_info("peername"))

    def _data(self, side: int, data: bytes) -> None:
        super()._data(side, data)
        self._tell("response_data" if side else "request_data", data)

    def _eof_received(self, side: int) -> None:
        super()._eof_received(side)
        if side == 1:
            self._tell("response_eof")

    def _lost(self, side: int, exc: BaseException | None) -> None:
        super()._lost(side, exc)
        if self._transports[1 - side] is None:
            self._tell("closed")
            self._observer = None

    def _tell(self, method: str, *args: Any) -> None:
        observer = self._observer
        if observer is None:
            return
        try:
            getattr(observer, method)(*args)
        except Exception:
            self._observer = None
            logger.exception("the inspector failed on a stream; it stops watching that stream")
