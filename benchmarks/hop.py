"""The cost of the hop between nodes: req/s and p50 through the node holding the client
against a node that forwards to it, in one run.

    .venv/bin/python -m benchmarks.hop [--connections 32] [--duration 10] [--repeat 3]

Run from the repository root; needs wrk and redis-server. It starts its own redis-server
(a free loopback port, no persistence), the benchmark origin, two ``ytun server
--registry`` nodes A and B, and one ``ytun client`` connected to A, all on 127.0.0.1.
Each round runs wrk against A (the holder) and then B (every request crosses the hop to
A), alternating so that noise hits both alike:

- ``keepalive``: persistent connections, so each wrk connection crosses the hop once and
  its requests then flow through B's splice: the per-request cost of the extra relay;
- ``close``: ``Connection: close``, a new public connection per request: each pays a new
  hop connection (connect, signed first line, holder-side adoption) as well.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.e2e.loadgen import parse_wrk
from benchmarks.e2e.procs import free_port
from benchmarks.workers import start, wait_for_200

HOST = "app.bench"


def wrk(port: int, connections: int, duration: float, close: bool) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    command += ["--timeout", "2s", "-H", f"Host: {HOST}"]
    if close:
        command += ["-H", "Connection: close"]
    text = subprocess.run(
        [*command, f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    result = parse_wrk(text)
    return {key: result[key] for key in ("rps", "p50_ms", "p99_ms", "errors")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    logs = Path(tempfile.mkdtemp(prefix="ytun-bench-hop-"))
    secret_file = logs / "cluster.secret"
    secret_file.write_text("bench-cluster-secret-0123456789\n")
    identifier = "bench-identifier-0123456789"
    redis_port, origin_port = free_port(), free_port()
    ports = {"A": free_port(), "B": free_port()}
    processes = [
        start(
            [
                *("redis-server", "--save", "", "--appendonly", "no"),
                *("--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(logs)),
            ],
            logs / "redis.log",
        ),
        start(
            [sys.executable, "-m", "benchmarks.e2e.origin", "--port", str(origin_port)],
            logs / "origin.log",
        ),
    ]
    results: dict[str, list[dict]] = {}
    try:
        time.sleep(1)
        for name, port in ports.items():
            processes.append(
                start(
                    [
                        *(sys.executable, "-m", "ytun", "server", "--listen", f"127.0.0.1:{port}"),
                        *("--registry", f"redis://127.0.0.1:{redis_port}/0"),
                        *("--cluster-listen", f"127.0.0.1:{free_port()}"),
                        *("--cluster-secret-file", str(secret_file)),
                        *("--host", f"{HOST}={identifier}", "--access-log", "off"),
                    ],
                    logs / f"node-{name}.log",
                )
            )
            time.sleep(1)  # A takes the client first: B starts once A is up
        processes.append(
            start(
                [
                    *(sys.executable, "-m", "ytun", "client"),
                    *("--server", f"127.0.0.1:{ports['A']}"),
                    *("--identifier", identifier, "--local", f"127.0.0.1:{origin_port}"),
                    *("--log-level", "warning"),
                ],
                logs / "client.log",
            )
        )
        for port in ports.values():
            wait_for_200(port, HOST)
        for _ in range(args.repeat):
            for scenario in ("keepalive", "close"):
                for name, port in ports.items():
                    result = wrk(port, args.connections, args.duration, scenario == "close")
                    results.setdefault(f"{scenario} {name}", []).append(result)
                    print(f"{scenario:9} node {name}: {json.dumps(result)}", flush=True)
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    print()
    print(f"| scenario | through | req/s (median of {args.repeat}) | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|")
    medians: dict[str, float] = {}
    for key, runs in results.items():
        scenario, name = key.split()
        ordered = sorted(runs, key=lambda run: run["rps"] or 0)
        middle = ordered[len(ordered) // 2]
        medians[key] = middle["rps"] or 0
        through = "A (holds the client)" if name == "A" else "B (one hop to A)"
        print(
            f"| {scenario} | {through} | {middle['rps']:,.0f} | {middle['p50_ms']:.3f} | "
            f"{middle['p99_ms']:.3f} | {sum(run['errors'] for run in runs)} |"
        )
    for scenario in ("keepalive", "close"):
        if medians.get(f"{scenario} A"):
            ratio = medians[f"{scenario} B"] / medians[f"{scenario} A"]
            print(f"{scenario}: through the hop / at the holder = {ratio:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(f"logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
