"""``PublicConnections``: the server's open public connections and its idle policy.

A sweep runs every ``idle_timeout / 2``; a connection whose ``activity`` counter did not
change and which was ``idle`` on two sweeps in a row is closed. The first group of tests
runs the policy on the real event loop with a small timeout and fake connections,
waiting with bounded polling; the second drives the sweeps with a manual clock, so exact
sweep counts and the promised idle window can be checked without depending on timing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from ytun.tunnel import connections as connections_module
from ytun.tunnel.connections import PublicConnections

IDLE_TIMEOUT = 0.05
#: Long enough for many sweeps at IDLE_TIMEOUT, short enough to keep the suite quick.
SEVERAL_TIMEOUTS = 10 * IDLE_TIMEOUT


class FakePublic:
    """A public connection as the policy sees it; records what the policy does to it."""

    def __init__(
        self, registry: PublicConnections | None = None, *, now: Callable[[], float] = float
    ) -> None:
        # With a registry, close() reports the connection gone, as connection_lost does;
        # ``now`` stamps closed_at (float() is 0.0 for tests that do not look at it).
        self.registry = registry
        self.now = now
        self.activity = 0
        self.idle = True
        self.closes = 0
        self.closed_at: float | None = None
        self.leaving: list[str] = []

    def close(self) -> None:
        self.closes += 1
        if self.closed_at is None:
            self.closed_at = self.now()
        if self.registry is not None:
            self.registry.closed(self)

    def client_leaving(self, identifier: str) -> None:
        self.leaving.append(identifier)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# -- on the real loop --------------------------------------------------------------------


@pytest.fixture
def connections() -> Iterator[PublicConnections]:
    """A policy with a small timeout whose sweeper does not outlive the test."""
    policy = PublicConnections(IDLE_TIMEOUT)
    yield policy
    policy.stop()


async def test_an_idle_connection_is_closed_and_forgotten(connections: PublicConnections) -> None:
    public = FakePublic(connections)
    connections.opened(public)
    assert len(connections) == 1
    await eventually(lambda: public.closes > 0)
    assert public.closes == 1
    assert len(connections) == 0


async def test_a_connection_that_keeps_reading_is_not_closed(
    connections: PublicConnections,
) -> None:
    public = FakePublic(connections)
    connections.opened(public)
    loop = asyncio.get_running_loop()
    until = loop.time() + SEVERAL_TIMEOUTS
    while loop.time() < until:
        public.activity += 1
        await asyncio.sleep(IDLE_TIMEOUT / 10)
    assert public.closes == 0
    # Once it stops reading, the policy does close it.
    await eventually(lambda: public.closes > 0)


async def test_a_connection_awaiting_an_answer_is_not_closed(
    connections: PublicConnections,
) -> None:
    public = FakePublic(connections)
    public.idle = False
    connections.opened(public)
    await asyncio.sleep(SEVERAL_TIMEOUTS)
    assert public.closes == 0
    public.idle = True
    await eventually(lambda: public.closes > 0)


async def test_only_the_idle_connection_of_several_is_closed(
    connections: PublicConnections,
) -> None:
    quiet, busy = FakePublic(connections), FakePublic(connections)
    busy.idle = False
    connections.opened(quiet)
    connections.opened(busy)
    await eventually(lambda: quiet.closes > 0)
    assert busy.closes == 0
    assert len(connections) == 1


async def test_a_connection_reported_closed_is_never_closed_by_the_policy(
    connections: PublicConnections,
) -> None:
    gone, watched = FakePublic(connections), FakePublic(connections)
    connections.opened(gone)
    connections.opened(watched)
    connections.closed(gone)
    assert len(connections) == 1
    # By the time the other idle connection is closed, ``gone`` has been swept past too.
    await eventually(lambda: watched.closes > 0)
    assert gone.closes == 0


async def test_closed_for_an_unknown_connection_is_harmless(connections: PublicConnections) -> None:
    connections.closed(FakePublic())
    assert len(connections) == 0


async def test_in_flight_counts_connections_awaiting_an_answer(
    connections: PublicConnections,
) -> None:
    publics = [FakePublic(connections) for _ in range(4)]
    for public in publics:
        public.idle = False
        connections.opened(public)
    publics[0].idle = True
    assert connections.in_flight == 3
    connections.closed(publics[1])
    assert connections.in_flight == 2
    connections.close_all()


async def test_client_leaving_is_passed_to_every_open_connection(
    connections: PublicConnections,
) -> None:
    publics = [FakePublic(connections) for _ in range(3)]
    for public in publics:
        public.idle = False  # kept open while the test runs
        connections.opened(public)
    connections.closed(publics[2])
    connections.client_leaving("secret-1")
    assert [public.leaving for public in publics] == [["secret-1"], ["secret-1"], []]
    connections.close_all()


async def test_client_leaving_may_close_connections_while_it_runs(
    connections: PublicConnections,
) -> None:

    class ClosesWhenItsClientLeaves(FakePublic):
        def client_leaving(self, identifier: str) -> None:
            super().client_leaving(identifier)
            self.close()

    publics = [ClosesWhenItsClientLeaves(connections) for _ in range(3)]
    for public in publics:
        connections.opened(public)
    connections.client_leaving("secret-1")
    assert all(public.closes == 1 for public in publics)
    assert len(connections) == 0


async def test_close_all_closes_every_connection_once_and_stops_the_sweeper(
    connections: PublicConnections,
) -> None:
    # Connections that do not report their end, so a running sweeper would close them again.
    publics = [FakePublic() for _ in range(3)]
    publics[0].idle = False
    for public in publics:
        connections.opened(public)
    connections.close_all()
    assert [public.closes for public in publics] == [1, 1, 1]
    await asyncio.sleep(SEVERAL_TIMEOUTS)
    assert [public.closes for public in publics] == [1, 1, 1]


async def test_close_all_copes_with_connections_that_forget_themselves(
    connections: PublicConnections,
) -> None:
    publics = [FakePublic(connections) for _ in range(5)]
    for public in publics:
        connections.opened(public)
    connections.close_all()
    assert [public.closes for public in publics] == [1] * 5
    assert len(connections) == 0


async def test_stop_keeps_connections_open(connections: PublicConnections) -> None:
    public = FakePublic(connections)
    connections.opened(public)
    connections.stop()
    await asyncio.sleep(SEVERAL_TIMEOUTS)
    assert public.closes == 0
    assert len(connections) == 1


async def test_without_an_idle_timeout_nothing_is_ever_closed() -> None:
    connections = PublicConnections(None)
    public = FakePublic(connections)
    connections.opened(public)
    await asyncio.sleep(SEVERAL_TIMEOUTS)
    assert public.closes == 0
    assert len(connections) == 1
    connections.close_all()
    assert public.closes == 1


async def test_the_sweeper_starts_again_for_connections_opened_after_all_were_gone(
    connections: PublicConnections,
) -> None:
    first = FakePublic(connections)
    connections.opened(first)
    await eventually(lambda: first.closes > 0)
    # Let the sweeper see the empty set and stop.
    await asyncio.sleep(IDLE_TIMEOUT)
    second = FakePublic(connections)
    connections.opened(second)
    await eventually(lambda: second.closes > 0)


# -- with a manual clock -----------------------------------------------------------------


class ManualTimer:
    """A timer of :class:`ManualLoop`."""

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualLoop:
    """Just enough of an event loop for the policy's timer, driven by :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, ManualTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object]) -> ManualTimer:
        timer = ManualTimer(self.now + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    @property
    def pending(self) -> int:
        return sum(1 for _when, _order, timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``, running each timer due on the way at its time."""
        target = self.now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _order, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self.now = when
                timer.callback()
        self.now = target


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualLoop:
    """The policy's timers on a manual clock (only its module sees the fake loop)."""
    loop = ManualLoop()
    monkeypatch.setattr(
        connections_module, "asyncio", SimpleNamespace(get_running_loop=lambda: loop)
    )
    return loop


TIMEOUT = 10.0
SWEEP = TIMEOUT / 2


def test_a_new_connection_is_closed_on_the_third_quiet_sweep(clock: ManualLoop) -> None:
    # The first sweep only observes it (when it opened between sweeps is unknown).
    connections = PublicConnections(TIMEOUT)
    public = FakePublic(connections, now=clock.time)
    connections.opened(public)
    clock.advance(2 * SWEEP)
    assert public.closes == 0
    clock.advance(SWEEP)
    assert public.closes == 1


def test_seen_reading_then_two_quiet_sweeps_close(clock: ManualLoop) -> None:
    connections = PublicConnections(TIMEOUT)
    public = FakePublic(connections, now=clock.time)
    connections.opened(public)
    clock.advance(SWEEP * 0.5)
    public.activity += 1
    clock.advance(SWEEP * 0.5)  # the read is seen: quiet from here
    clock.advance(SWEEP)
    assert public.closes == 0
    clock.advance(SWEEP)
    assert public.closes == 1


def test_activity_between_sweeps_starts_the_count_again(clock: ManualLoop) -> None:
    connections = PublicConnections(TIMEOUT)
    public = FakePublic(connections, now=clock.time)
    connections.opened(public)
    clock.advance(SWEEP)  # quiet once
    public.activity += 1
    clock.advance(SWEEP)  # activity seen: the count starts again
    assert public.closes == 0
    clock.advance(SWEEP)  # quiet once
    assert public.closes == 0
    clock.advance(SWEEP)  # quiet twice
    assert public.closes == 1


def test_a_connection_idle_after_its_last_read_is_closed_within_the_promised_window(
    clock: ManualLoop,
) -> None:
    connections = PublicConnections(TIMEOUT)
    public = FakePublic(connections, now=clock.time)
    connections.opened(public)
    clock.advance(SWEEP * 0.3)
    public.activity += 1
    last_read = clock.now
    while public.closed_at is None:
        clock.advance(SWEEP / 10)
    assert TIMEOUT <= public.closed_at - last_read <= 1.5 * TIMEOUT


def test_the_sweeper_stops_when_no_connection_is_left(clock: ManualLoop) -> None:
    connections = PublicConnections(TIMEOUT)
    public = FakePublic(connections, now=clock.time)
    connections.opened(public)
    assert clock.pending == 1
    connections.closed(public)
    clock.advance(SWEEP)
    assert clock.pending == 0


def test_one_timer_serves_every_connection(clock: ManualLoop) -> None:
    connections = PublicConnections(TIMEOUT)
    for _ in range(10):
        connections.opened(FakePublic(connections, now=clock.time))
    assert clock.pending == 1
    clock.advance(SWEEP)
    assert clock.pending == 1


def test_stop_cancels_the_timer_and_opened_starts_it_again(clock: ManualLoop) -> None:
    connections = PublicConnections(TIMEOUT)
    first = FakePublic(connections, now=clock.time)
    connections.opened(first)
    connections.stop()
    assert clock.pending == 0
    clock.advance(3 * TIMEOUT)
    assert first.closes == 0
    second = FakePublic(connections, now=clock.time)
    connections.opened(second)
    assert clock.pending == 1
    clock.advance(TIMEOUT * 1.5)
    assert (first.closes, second.closes) == (1, 1)


def test_a_new_connection_is_given_at_least_the_idle_timeout(clock: ManualLoop) -> None:
    connections = PublicConnections(TIMEOUT)
    # Another connection started the sweeper; the new one arrives just before a sweep.
    connections.opened(FakePublic(connections, now=clock.time))
    clock.advance(SWEEP * 0.9)
    public = FakePublic(connections, now=clock.time)
    connections.opened(public)
    opened_at = clock.now
    clock.advance(3 * TIMEOUT)
    assert public.closed_at is not None
    assert public.closed_at - opened_at >= TIMEOUT


def test_a_connection_whose_answer_just_completed_is_given_at_least_the_idle_timeout(
    clock: ManualLoop,
) -> None:
    connections = PublicConnections(TIMEOUT)
    public = FakePublic(connections, now=clock.time)
    public.idle = False
    connections.opened(public)
    clock.advance(SWEEP * 1.5)  # one sweep sees it busy
    public.idle = True
    answered_at = clock.now
    clock.advance(3 * TIMEOUT)
    assert public.closed_at is not None
    assert public.closed_at - answered_at >= TIMEOUT
