"""Prometheus metrics of one tunnel server, and the routes that serve them.

:class:`TunnelMetrics` is a request observer (:mod:`ytun.tunnel.observe`): the server calls
it once per request, and it only adds to plain counters, so the data path pays a few dict
and list operations per request, with no lock and no ``prometheus_client`` call. The
Prometheus families are built when ``/metrics`` is scraped, in a ``CollectorRegistry`` of
this server's own (two servers in one process never share or clash); the gauges (clients,
sessions, streams) are read from the server at that moment, not kept up to date per event.
A scrape copies the counts in the event loop and leaves building and formatting the text
(slow in ``prometheus_client``: about 0.3 s of CPU for 1,000 hosts) to a thread.

``prometheus_client`` is an optional extra (``pip install 'ytun[metrics]'``): without it
the counting still runs and ``/metrics`` answers 501 with that command.

Another layer can add counters of its own with :meth:`TunnelMetrics.add_counters` (a
cluster node adds its hops and takeovers): a callable read at each scrape, in the loop.

Labels are bounded: ``host`` is the registered host a request was routed by (``-`` for a
Host no route matches, so made-up names, paths and identifiers never become labels), and
after :data:`MAX_HOSTS` distinct hosts the next ones share ``host="other"``.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..tunnel.server import Server, ServerStats
from . import web
from .health import add_health_routes

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

#: Distinct host labels; requests for further hosts are counted as ``host="other"``.
MAX_HOSTS = 1000
#: Host header values remembered with their label (more are looked up every time).
MAX_CACHED_HOSTS = 4096
#: Upper bounds (seconds) of the request duration histogram's buckets.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNKNOWN_HOST = "-"
OTHER_HOSTS = "other"
INSTALL_HINT = "metrics need prometheus_client: pip install 'ytun[metrics]'\n"
_CODE_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")

#: Counters another layer reports: metric name → (help, value), read at each scrape.
CounterSource = Callable[[], Mapping[str, tuple[str, float]]]


class HostStats:
    """The counters of one host label."""

    __slots__ = ("codes", "buckets", "duration_sum", "sent", "received")

    def __init__(self) -> None:
        self.codes = [0] * 10  # by status // 100 % 10 (0 and 6..9: out of range)
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # per bucket, the last is +Inf
        self.duration_sum = 0.0
        self.sent = 0
        self.received = 0

    def copy(self) -> HostStats:
        copied = HostStats()
        copied.codes = list(self.codes)
        copied.buckets = list(self.buckets)
        copied.duration_sum = self.duration_sum
        copied.sent = self.sent
        copied.received = self.received
        return copied

    def by_code_class(self) -> dict[str, int]:
        counts = dict.fromkeys(_CODE_CLASSES, 0)
        for index, count in enumerate(self.codes):
            counts[_CODE_CLASSES[index] if 1 <= index <= 5 else "other"] += count
        return counts


@dataclass(frozen=True)
class Snapshot:
    """Every count at one moment, taken in the event loop (a copy: formatting it may
    run in another thread while requests go on)."""

    server: ServerStats
    hosts: dict[str, HostStats]
    counters: dict[str, tuple[str, float]]


class TunnelMetrics:
    """Counts the requests of one :class:`~ytun.Server` by host (a request observer:
    give it to ``server.add_observer``, or use :func:`add_metrics_routes`)."""

    def __init__(self, server: Server, *, max_hosts: int = MAX_HOSTS) -> None:
        self.server = server
        self.max_hosts = max_hosts
        self.hosts: dict[str, HostStats] = {}
        self._by_header: dict[bytes, HostStats] = {}  # a Host value as received → its stats
        self._registry: CollectorRegistry | None = None
        self._snapshot: Snapshot | None = None  # what collect() reports
        self._scraping = asyncio.Lock()  # one scrape at a time: they share _snapshot
        self._sources: list[CounterSource] = []

    def add_counters(self, source: CounterSource) -> None:
        """Report ``source()``'s counters with every scrape (names like
        ``ytun_cluster_hops_sent``; ``_total`` is added in the text format)."""
        self._sources.append(source)

    # -- the observer (the data path) ----------------------------------------------------

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
        stats = self._by_header.get(host)
        if stats is None:
            stats = self._stats_for(host)
        duration = time.monotonic() - started
        stats.codes[status // 100 % 10] += 1  # statuses have three digits
        stats.buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        stats.duration_sum += duration
        if status != 101:  # a switched connection's bytes are all told when it ends
            stats.sent += sent
        stats.received += received

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
        stats = self._by_header.get(host)
        if stats is None:
            stats = self._stats_for(host)
        stats.sent += sent
        stats.received += received

    def tcp_end(self, peer: str, port: int, sent: int, received: int, started: float) -> None:
        stats = self._labelled(f"tcp:{port}")  # ports are routes: bounded like hosts
        stats.sent += sent
        stats.received += received

    def _stats_for(self, host: bytes) -> HostStats:
        server = self.server
        name = server.registry.matched_host(host.decode("latin-1"), server.domain)
        stats = self._labelled(name if name is not None else UNKNOWN_HOST)
        if len(self._by_header) < MAX_CACHED_HOSTS:
            self._by_header[host] = stats
        return stats

    def _labelled(self, label: str) -> HostStats:
        stats = self.hosts.get(label)
        if stats is None:
            if len(self.hosts) >= self.max_hosts and label != UNKNOWN_HOST:
                label = OTHER_HOSTS
                stats = self.hosts.get(label)
            if stats is None:
                stats = self.hosts[label] = HostStats()
        return stats

    # -- scraping ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Copy every count (about 0.5 ms for 1,000 hosts), and look Host values up
        again from now on: routes may have changed since they were first seen."""
        self._by_header.clear()
        hosts = {host: stats.copy() for host, stats in self.hosts.items()}
        counters = {name: pair for source in self._sources for name, pair in source().items()}
        return Snapshot(self.server.stats(), hosts, counters)

    def collect(self) -> Iterator[Any]:
        """The metric families of the last snapshot (``prometheus_client``'s collector
        protocol; :meth:`exposition` takes the snapshot)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snapshot = self._snapshot
        if snapshot is None:
            return
        stats = snapshot.server
        yield GaugeMetricFamily(
            "ytun_clients_connected", "Tunnel clients connected.", value=stats.clients_connected
        )
        yield GaugeMetricFamily(
            "ytun_sessions", "Yamux sessions (clients, handshaking ones too).", value=stats.sessions
        )
        yield GaugeMetricFamily(
            "ytun_open_streams",
            "Open yamux streams over every session (control streams included).",
            value=stats.open_streams,
        )
        refused = CounterMetricFamily(
            "ytun_control_refused",
            "Control connections (CONNECT) refused, by reason.",
            labels=["reason"],
        )
        for reason, count in stats.refused.items():
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily(
            "ytun_client_reconnects",
            "Clients that connected again after their session ended.",
            value=stats.reconnects,
        )
        yield CounterMetricFamily(
            "ytun_tcp_connections",
            "Connections accepted on TCP tunnel listeners.",
            value=stats.tcp_connections,
        )

        requests = CounterMetricFamily(
            "ytun_requests",
            "Public HTTP requests answered, by host and status class.",
            labels=["host", "code"],
        )
        durations = HistogramMetricFamily(
            "ytun_request_duration_seconds",
            "From a request's head received to its answer's last byte sent.",
            labels=["host"],
        )
        sent = CounterMetricFamily(
            "ytun_bytes_sent", "Bytes sent to public clients.", labels=["host"]
        )
        received = CounterMetricFamily(
            "ytun_bytes_received", "Bytes received from public clients.", labels=["host"]
        )
        for host, host_stats in snapshot.hosts.items():
            for code, count in host_stats.by_code_class().items():
                if count:
                    requests.add_metric([host, code], count)
            cumulative = 0
            buckets = []
            for bound, count in zip((*DURATION_BUCKETS, "+Inf"), host_stats.buckets, strict=True):
                cumulative += count
                buckets.append((str(bound), cumulative))
            durations.add_metric([host], buckets, host_stats.duration_sum)
            sent.add_metric([host], host_stats.sent)
            received.add_metric([host], host_stats.received)
        yield from (requests, durations, sent, received)
        for name, (help_text, value) in snapshot.counters.items():
            yield CounterMetricFamily(name, help_text, value=value)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type, now. Raises ImportError
        without ``prometheus_client``."""
        generate = self._generator()
        self._snapshot = self.snapshot()
        return generate()

    async def exposition_in_thread(self) -> tuple[bytes, str]:
        """As :meth:`exposition`, but only the snapshot is taken in the event loop: the
        families are built and formatted in a thread (prometheus_client needs about
        0.3 s of CPU for 1,000 hosts, which must not stall the tunnel)."""
        generate = self._generator()
        async with self._scraping:
            self._snapshot = self.snapshot()
            return await asyncio.to_thread(generate)

    def _generator(self) -> Callable[[], tuple[bytes, str]]:
        from prometheus_client import exposition
        from prometheus_client.registry import CollectorRegistry

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self)
        registry = self._registry
        return lambda: (exposition.generate_latest(registry), exposition.CONTENT_TYPE_LATEST)


def add_metrics_routes(router: web.Router, server: Server) -> TunnelMetrics:
    """Observe ``server`` and serve ``GET /metrics`` (behind the router's guard) with
    ``GET /healthz`` and ``GET /readyz`` (public) on ``router``."""
    metrics = TunnelMetrics(server)
    server.add_observer(metrics)

    async def scrape(request: web.Request) -> web.Response:
        try:
            body, content_type = await metrics.exposition_in_thread()
        except ImportError:
            return web.Response(501, INSTALL_HINT.encode())
        return web.Response(200, body, content_type)

    router.add("GET", "/metrics", scrape)
    add_health_routes(router, server)
    return metrics
