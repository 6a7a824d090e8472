"""What the Prometheus metrics cost end to end: two tunnels side by side, one server
observed by the metrics (and scraped every second), one not, loaded in turns by wrk.

    python -m benchmarks.metrics_cost [--rounds 8] [--duration 5] [--connections 32]

Runs alternate (off, on, on, off, ...) so that load from elsewhere on the machine hits
both alike; the figure is the median of each round's on/off ratio of req/s, with each
server's CPU time per request. Everything is on 127.0.0.1 and stops with the script.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import time

from benchmarks.e2e.loadgen import parse_wrk
from benchmarks.e2e.procs import free_port
from benchmarks.workers import cpu_seconds, wait_for_200


def wrk(port: int, host: str, connections: int, duration: float) -> tuple[float, int]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-H", f"Host: {host}"]
    output = subprocess.run(
        [*command, f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    result = parse_wrk(output)
    return result["rps"], result["requests"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="0: never")
    parser.add_argument(
        "--calibrate", action="store_true", help="metrics off in both: the noise of the figure"
    )
    args = parser.parse_args()
    python = sys.executable
    procs: list[subprocess.Popen[bytes]] = []

    def start(*command: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    try:
        origin_port = free_port()
        start(python, "-m", "benchmarks.e2e.origin", "--port", str(origin_port))
        tunnels = {}
        for name in ("off", "on"):
            port, identifier = free_port(), secrets.token_hex(12)
            host = f"bench.local:{port}"
            server = [python, "-m", "benchmarks.e2e.metrics_server", "--listen"]
            server += [f"127.0.0.1:{port}", "--host", f"{host}={identifier}"]
            if name == "on" and not args.calibrate:
                server += ["--metrics", "--scrape-interval", str(args.scrape_interval)]
            server_proc = start(*server)
            time.sleep(0.5)
            client = [python, "-m", "ytun", "client", "--server", f"127.0.0.1:{port}"]
            client += ["--identifier", identifier, "--local", f"127.0.0.1:{origin_port}"]
            start(*client, "--log-level", "warning")
            tunnels[name] = (port, host, server_proc.pid)
        for port, host, _ in tunnels.values():
            wait_for_200(port, host, timeout=30)
            wrk(port, host, args.connections, 1)  # warm up
        ratios, cpu = [], {name: [0.0, 0] for name in tunnels}
        for round_ in range(args.rounds):
            rps = {}
            order = ["off", "on"] if round_ % 2 == 0 else ["on", "off"]  # neither always first
            for name in order:
                port, host, pid = tunnels[name]
                before = cpu_seconds(pid)
                rps[name], total = wrk(port, host, args.connections, args.duration)
                cpu[name][0] += cpu_seconds(pid) - before
                cpu[name][1] += total
            ratios.append(rps["on"] / rps["off"])
            print(f"round {round_ + 1}: off {rps['off']:,.0f} req/s, on {rps['on']:,.0f} req/s")
        per_request = {name: 1e6 * seconds / count for name, (seconds, count) in cpu.items()}
        print(
            f"metrics on/off req/s: median {statistics.median(ratios):.3f} "
            f"(rounds {', '.join(f'{r:.3f}' for r in ratios)})\n"
            f"server CPU per request: off {per_request['off']:.1f} us, "
            f"on {per_request['on']:.1f} us ({per_request['on'] / per_request['off']:.3f}x)"
        )
    finally:
        for proc in reversed(procs):  # clients before their servers: no reconnect noise
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
