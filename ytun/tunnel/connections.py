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

    def client_leaving(self, client: str) -> None: ...


class PublicConnections:
    """Open public connections. One that read nothing and awaited no answer for between
    ``idle_timeout`` and 1.5 × ``idle_timeout`` is closed, by one timer for all of them: a
    sweep every half timeout. A connection seen reading is closed on the second quiet sweep
    after that one (its read came before it); one just opened, or seen waiting for an
    answer, only on the third (its quiet began after that sweep, at an unknown time)."""

    def __init__(self, idle_timeout: float | None) -> None:
        self.idle_timeout = idle_timeout
        # connection -> (its activity at the last sweep, quiet sweeps in a row; -1 when the
        # next sweep cannot yet count as quiet)
        self._open: dict[PublicConnection, tuple[int, int]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, public: PublicConnection) -> None:
        self._open[public] = (public.activity, -1)
        if self._sweeper is None and self.idle_timeout is not None:
            self._schedule()

    def closed(self, public: PublicConnection) -> None:
        """Gone, or no longer a public connection (it became a client's control leg)."""
        self._open.pop(public, None)

    @property
    def in_flight(self) -> int:
        """Connections with a request still waiting for its answer."""
        return sum(1 for public in self._open if not public.idle)

    def client_leaving(self, client: str) -> None:
        for public in list(self._open):
            public.client_leaving(client)

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
            if not public.idle:
                self._open[public] = (public.activity, -1)
            elif public.activity != seen:
                self._open[public] = (public.activity, 0)
            elif quiet + 1 >= 2:
                public.close()
            else:
                self._open[public] = (seen, quiet + 1)
        if self._open:
            self._schedule()
