"""``TokenBuckets`` (``ytun/tunnel/ratelimit.py``) on a clock the test controls."""

from __future__ import annotations

import pytest

from ytun.tunnel.ratelimit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]
    assert buckets.refused("a") == 1
    clock.now += 0.5  # one token back at 2 per second
    assert buckets.take("a") is True
    assert buckets.take("a") is False
    clock.now += 60  # refills up to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]


def test_keys_are_independent() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=Clock())
    assert buckets.take("a") is True
    assert buckets.take("a") is False
    assert buckets.take("b") is True


def test_the_table_is_bounded_by_max_keys() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=100, clock=Clock())
    for number in range(10_000):
        buckets.take(f"10.0.{number // 256}.{number % 256}")
    assert len(buckets) == 100
    assert buckets.take("10.0.0.0") is True  # forgotten long ago: a fresh bucket


def test_recently_seen_keys_are_kept() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=2, clock=Clock())
    buckets.take("a")
    buckets.take("b")
    buckets.take("a")  # a is now the most recent
    buckets.take("c")  # evicts b
    assert buckets.take("a") is False  # still tracked, still empty
    assert buckets.take("b") is True


@pytest.mark.parametrize("rate, burst, max_keys", [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_bad_settings(rate: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate, burst, max_keys=max_keys)
