"""What the server tells about each public request when it ends: the observer interface.

The front (:mod:`.front`) and the TCP listeners (:mod:`.tcp`) call one observer where a
request, a switched connection or a TCP tunnel connection ends; the access log
(:class:`~ytun.tunnel.access.AccessLog`) is one, the metrics
(:class:`ytun.control.metrics.TunnelMetrics`) another. With both, :class:`FanOut` calls
each in turn, so observing costs the data path one call per request whatever is watching,
and nothing at all when nothing is (the callers test for ``None`` first).

Sizes are bytes on the public connection: ``sent`` to the public client, ``received``
from it. ``started`` is the :func:`time.monotonic` of the request head (or of the TCP
connection's start).
"""

from __future__ import annotations

from typing import Protocol


class RequestObserver(Protocol):
    def request(
        self,
        peer: str,
        host: bytes,
        method: bytes,
        target: bytes,
        status: int,
        sent: int,
        received: int,
        started: float,
    ) -> None:
        """A request answered (by the origin or by the server). For a ``101`` answer,
        ``sent`` is its head; the rest follows in :meth:`upgrade_end`."""

    def upgrade_end(
        self,
        peer: str,
        host: bytes,
        method: bytes,
        target: bytes,
        status: int,
        sent: int,
        received: int,
        started: float,
    ) -> None:
        """A switched connection (WebSocket, CONNECT) ended: ``sent`` counts everything
        from the ``101`` head on, ``received`` what came after the switch."""

    def tcp_end(self, peer: str, port: int, sent: int, received: int, started: float) -> None:
        """A TCP tunnel connection (on listener ``port``) ended."""


class FanOut:
    """Several observers as one, called in the order given."""

    __slots__ = ("observers",)

    def __init__(self, observers: tuple[RequestObserver, ...]) -> None:
        self.observers = observers

    def request(
        self,
        peer: str,
        host: bytes,
        method: bytes,
        target: bytes,
        status: int,
        sent: int,
        received: int,
        started: float,
    ) -> None:
        for observer in self.observers:
            observer.request(peer, host, method, target, status, sent, received, started)

    def upgrade_end(
        self,
        peer: str,
        host: bytes,
        method: bytes,
        target: bytes,
        status: int,
        sent: int,
        received: int,
        started: float,
    ) -> None:
        for observer in self.observers:
            observer.upgrade_end(peer, host, method, target, status, sent, received, started)

    def tcp_end(self, peer: str, port: int, sent: int, received: int, started: float) -> None:
        for observer in self.observers:
            observer.tcp_end(peer, port, sent, received, started)


def combine(*observers: RequestObserver | None) -> RequestObserver | None:
    """The one observer the callers use: None for none, the observer itself for one."""
    present = tuple(observer for observer in observers if observer is not None)
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return FanOut(present)
