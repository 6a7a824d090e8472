"""Fixtures for the benchmarks (``python -m pytest benchmarks --benchmark-only``).

The benchmark files are named ``test_bench_*.py`` so pytest collects them when
``benchmarks`` is given on the command line; the default test run (``testpaths =
["tests"]``) never sees them.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from ytun.yamux import codec as frames


@pytest.fixture(params=frames.available(), ids=frames.implementation_name)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    """One frame-codec implementation (compiled ``c`` or pure-Python ``py``); benchmarks
    pass it to ``Session(codec=...)``."""
    return request.param


@pytest.fixture
def throughput(benchmark):
    """Call with the bytes one round moves, after timing: records MB/s (10**6 bytes/s) of
    the mean and of the best round in ``extra_info``."""

    def record(nbytes: int) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: nothing was timed
            return
        benchmark.extra_info["MB/s (mean)"] = round(nbytes / stats.stats.mean / 1e6, 1)
        benchmark.extra_info["MB/s (best)"] = round(nbytes / stats.stats.min / 1e6, 1)

    return record
