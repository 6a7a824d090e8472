"""Micro-benchmarks of the registry: the per-request Host lookup (exact, bare fallback,
the wildcard-domain rule, a miss) among 10,000 hosts, the per-CONNECT ``owner()`` (one
SHA-256), and a durable SQLite write (``add_host`` returns after fsync)."""

from __future__ import annotations

import itertools
import pathlib

import pytest

from ytun import MemoryRegistry, SqliteRegistry

HOSTS = 10_000
DOMAIN = "tunnel.example.com"


@pytest.fixture(scope="module")
def registry() -> MemoryRegistry:
    registry = MemoryRegistry()
    for n in range(HOSTS):
        registry.add_host(f"app{n}.{DOMAIN}", f"identifier-{n}")
    return registry


@pytest.mark.parametrize(
    "host",
    [f"app5000.{DOMAIN}", f"app5000.{DOMAIN}:8000", f"api.app5000.{DOMAIN}:8000", f"no.{DOMAIN}"],
    ids=["exact", "bare-fallback", "wildcard", "miss"],
)
def test_bench_lookup_host(benchmark, registry: MemoryRegistry, host: str) -> None:
    key = benchmark(registry.lookup_host, host, DOMAIN)
    assert (key is None) == host.startswith("no.")


def test_bench_owner(benchmark, registry: MemoryRegistry) -> None:
    assert benchmark(registry.owner, "identifier-5000") is not None


def test_bench_sqlite_add_host(benchmark, tmp_path: pathlib.Path) -> None:
    counter = itertools.count()
    with SqliteRegistry(tmp_path / "ytun.db") as registry:
        benchmark(lambda: registry.add_host(f"h{next(counter)}.{DOMAIN}", "identifier"))
        assert len(registry.hosts()) == next(counter)
