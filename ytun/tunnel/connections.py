"""The server's open public connections, and the one idle policy that applies to them."""

from __future__ import annotations

import asyncio
from typing import Protocol


class PublicConnection(Protocol):
    """What the policy needs of a public connection."""

    #: Grows with every read; the policy compares it between sweeps.
    activity: int

    @property
    def idle(self) -> bool:
        """No request in flight on this connection."""

    def close(self) -> None: ...

    def client_leaving(self, identifier: str) -> None: ...


class PublicConnections:
    """Open public connections. One that read nothing and awaited no answer for between
    ``idle_timeout`` and 1.5 × ``idle_timeout`` is closed: a sweep every half timeout
    closes it when it is found quiet twice in a row (one timer for all connections)."""

    def __init__(self, idle_timeout: float | None) -> None:
        self.idle_timeout = idle_timeout
        # connection -> (its activity at the last sweep, quiet sweeps in a row)
        self._open: dict[PublicConnection, tuple[int, int]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, public: PublicConnection) -> None:
        self._open[public] = (public.activity, 0)
        if self._sweeper is None and self.idle_timeout is not None:
            self._schedule()

    def closed(self, public: PublicConnection) -> None:
        """Gone, or no longer a public connection (it became a client's control leg)."""
        self._open.pop(public, None)

    @property
    def in_flight(self) -> int:
        """Connections with a request still waiting for its answer."""
        return sum(1 for public in self._open if not public.idle)

    def client_leaving(self, identifier: str) -> None:
        for public in list(self._open):
            public.client_leaving(identifier)

    def close_all(self) -> None:
        self.stop()
        for public in list(self._open):
            public.close()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _schedule(self) -> None:
        assert self.idle_timeout is not None
        self._sweeper = asyncio.get_running_loop().call_later(self.idle_timeout / 2, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        for public, (seen, quiet) in list(self._open.items()):
            if public.activity != seen or not public.idle:
                self._open[public] = (public.activity, 0)
            elif quiet + 1 >= 2:
                public.close()
            else:
                self._open[public] = (seen, quiet + 1)
        if self._open:
            self._schedule()
