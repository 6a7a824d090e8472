"""A token bucket per key (a source address), with a bounded number of keys."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    """``rate`` tokens a second up to ``burst`` per key; at most ``max_keys`` keys are
    tracked (the least recently seen is forgotten first), so the table stays bounded
    whatever the number of addresses."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be positive, burst and max_keys at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens at ``stamp``, stamp, takes refused so far)
        self._buckets: OrderedDict[str, tuple[float, float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> bool:
        """Spend one token of ``key``; False when it has none left."""
        now = self._clock()
        tokens, stamp, refused = self._buckets.pop(key, (float(self.burst), now, 0))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            refused += 1
        self._buckets[key] = (tokens, now, refused)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def refused(self, key: str) -> int:
        """How many takes of ``key`` found the bucket empty (while it was tracked)."""
        entry = self._buckets.get(key)
        return entry[2] if entry is not None else 0
