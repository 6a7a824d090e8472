"""What the request inspector costs: requests/s and bulk MB/s through a real tunnel with
the client's inspector off and on (loopback only, bounded in time; needs ``wrk``).

    python -m benchmarks.inspector [--duration 5] [--rounds 2] [--json FILE]

``ytun server`` and ``ytun client`` run as subprocesses (the client with and without
``--inspect``), the origin in this process (a fixed keep-alive answer); ``wrk`` loads the
public port with 1 thread and 8 connections. Off and on alternate, ``--rounds`` times
each; the median of each is reported, with on/off as a ratio. First, in this process,
the capture alone: microseconds per small exchange (a GET and its 200) it adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import uvloop

from benchmarks.e2e.procs import free_port

IDENTIFIER = "inspector-bench-identifier"
WORKLOADS = {"small": 16, "bulk": 1024 * 1024}  # response body bytes


class Origin(asyncio.Protocol):
    """Answers every request head with a fixed response (GET only, keep-alive)."""

    answers: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            path = head.split(b" ", 2)[1]
            self.transport.write(self.answers[path])  # type: ignore[attr-defined]


def ytun(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ytun", *args, "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, YTUN_IDENTIFIER=IDENTIFIER),
    )


def wait_line(process: subprocess.Popen[bytes], text: bytes) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if text in line:
            return
    raise RuntimeError(f"{text!r} not seen")


async def wrk(url: str, host: str, duration: float) -> tuple[float, float]:
    """Requests/s and MB/s (transfer, as wrk counts it)."""
    process = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        "-c8",
        f"-d{int(duration)}s",
        "-H",
        f"Host: {host}",
        url,
        stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), duration + 30)
    text = out.decode()
    found = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if found is None:
        raise RuntimeError(f"wrk failed:\n{text}")
    rate = float(found.group(1))
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    assert transfer is not None
    scale = {"B": 1e-6, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}[transfer.group(2)]
    return rate, float(transfer.group(1)) * scale


def capture_cost(count: int = 50_000) -> float:
    """Microseconds the capture spends on one small keep-alive exchange."""
    from ytun.inspector import ExchangeLog
    from ytun.inspector.capture import StreamCapture

    request = (
        b"GET /small HTTP/1.1\r\nHost: bench.test:8000\r\nUser-Agent: wrk\r\n"
        b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: bench.test:8000\r\nVia: 1.1 ytun-0123456789ab\r\n\r\n"
    )
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n" + b"x" * 16
    capture = StreamCapture(ExchangeLog())
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(count):
            capture.request_data(request)
            capture.response_data(response)
        best = min(best, (time.perf_counter() - started) / count * 1e6)
    return best


async def run(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    per_exchange = capture_cost()
    print(json.dumps({"capture_us_per_exchange": round(per_exchange, 1)}), flush=True)
    for path, size in WORKLOADS.items():
        Origin.answers[f"/{path}".encode()] = (
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
        )
    origin = await loop.create_server(Origin, "127.0.0.1", 0)
    origin_port = origin.sockets[0].getsockname()[1]
    port = free_port()
    host = f"bench.test:{port}"
    server = ytun(
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--host",
        f"{host}={IDENTIFIER}",
        "--access-log",
        "off",
    )
    results: dict[str, dict[str, list[float]]] = {w: {"off": [], "on": []} for w in WORKLOADS}
    try:
        wait_line(server, b"listening")
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                extra = ["--inspect", f"127.0.0.1:{free_port()}"] if mode == "on" else []
                client = ytun(
                    "client",
                    "--server",
                    f"127.0.0.1:{port}",
                    "--local",
                    f"127.0.0.1:{origin_port}",
                    *extra,
                )
                try:
                    await asyncio.sleep(1.5)  # connected (the tunnel logs at info only)
                    for workload in WORKLOADS:
                        rate, mbps = await wrk(
                            f"http://127.0.0.1:{port}/{workload}", host, args.duration
                        )
                        results[workload][mode].append(mbps if workload == "bulk" else rate)
                finally:
                    client.terminate()
                    client.wait(10)
    finally:
        server.terminate()
        server.wait(10)
        origin.close()
    summary: dict = {"capture_us_per_exchange": round(per_exchange, 1)}
    for workload, modes in results.items():
        off, on = statistics.median(modes["off"]), statistics.median(modes["on"])
        unit = "MB/s" if workload == "bulk" else "req/s"
        summary[workload] = {
            "unit": unit,
            "off": round(off, 1),
            "on": round(on, 1),
            "on/off": round(on / off, 3),
            "runs": modes,
        }
        print(json.dumps({workload: summary[workload]}), flush=True)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    arguments = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed")
    outcome = uvloop.run(asyncio.wait_for(run(arguments), 600))
    if arguments.json:
        with open(arguments.json, "w") as out:
            json.dump(outcome, out, indent=2)
