"""``ytun server --workers 1`` against ``--workers 2`` in one run, with several clients.

    .venv/bin/python -m benchmarks.workers [--clients 4] [--connections 64] [--duration 10]
                                           [--repeat 2] [--workers 1,2]

Run from the repository root; needs wrk. The benchmark origin, K tunnel clients (one
virtual host each) and the server run on 127.0.0.1. Each scenario runs K wrk processes at
once, one per host (``-t1 -c N/K``), so that every client carries load:

- ``keepalive``: persistent connections; a connection is handed over at most once, at its
  first request, when it lands on a worker without its client;
- ``close``: ``Connection: close``, a new connection per request: with 2 workers about
  half of them land on the worker that does not hold their client and are handed over.

The settings alternate (1, 2, 1, 2, …) so that noise on the machine hits both alike. After
each run the server is stopped; each worker logs how many connections it handed over and
adopted, and the CPU seconds of the server's processes (parent and workers, from /proc)
give the cost per request and, for the ``handoff`` scenario, where the hand-off costs:

- ``handoff``: 2 workers, one client, ``Connection: close``: the worker without the client
  only accepts, reads a head and hands the connection over; its CPU seconds per hand-off
  are the sending side's cost. The holder's CPU seconds per request, against one worker's
  in the ``close`` run, are the adopting side's extra.

``--descriptors-only`` measures the descriptor passing alone, in one process: a loopback
connection's socket duplicated, sent with its bytes over the hand-off socket, received and
closed, N times (no HTTP, no transports).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.e2e.loadgen import parse_wrk
from benchmarks.e2e.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def switches(pid: int) -> int:
    """Context switches so far (voluntary: it waited for events; involuntary: preempted)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", text))


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )


def wait_for_200(port: int, host: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(request, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host} does not answer through the tunnel")
        time.sleep(0.2)


def wrk(port: int, hosts: list[str], connections: int, duration: float, close: bool) -> dict:
    per_host = max(1, connections // len(hosts))
    runs = []
    for host in hosts:
        command = [
            "wrk",
            "-t1",
            f"-c{per_host}",
            f"-d{duration:g}s",
            "--latency",
            "--timeout",
            "2s",
        ]
        command += ["-H", f"Host: {host}"]
        if close:
            command += ["-H", "Connection: close"]
        runs.append(
            subprocess.Popen(
                [*command, f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True
            )
        )
    results = [parse_wrk(run.communicate(timeout=duration + 30)[0]) for run in runs]
    return {
        "rps": sum(r["rps"] or 0 for r in results),
        "errors": sum(r["errors"] for r in results),
        "p50_ms": max((r["p50_ms"] or 0) for r in results),
        "p99_ms": max((r["p99_ms"] or 0) for r in results),
    }


def run_once(
    workers: int, clients: int, origin: int, scenario: str, args: argparse.Namespace, logs: Path
) -> dict:
    port = free_port()
    names = [f"h{i}.bench:{port}" for i in range(clients)]
    secrets_ = [secrets.token_hex(8) for _ in names]
    command = [sys.executable, "-m", "ytun", "server", "--listen", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers), "--access-log", "off", "--log-level", "info"]
    for name, secret in zip(names, secrets_, strict=True):
        command += ["--host", f"{name}={secret}"]
    log = logs / f"server-{scenario}-{workers}.log"
    log.unlink(missing_ok=True)
    server = start(command, log)
    tunnel_clients = [
        start(
            [
                *(sys.executable, "-m", "ytun", "client", "--server", f"127.0.0.1:{port}"),
                *("--identifier", secret, "--local", f"127.0.0.1:{origin}"),
                *("--log-level", "warning"),
            ],
            logs / f"client-{i}.log",
        )
        for i, secret in enumerate(secrets_)
    ]
    try:
        for name in names:
            wait_for_200(port, name)
        pids = [server.pid, *children(server.pid)]
        before = {pid: (cpu_seconds(pid), switches(pid)) for pid in pids}
        result = wrk(port, names, args.connections, args.duration, scenario != "keepalive")
        result["cpu_s"] = {str(pid): cpu_seconds(pid) - before[pid][0] for pid in pids}
        result["switches"] = sum(switches(pid) - before[pid][1] for pid in pids)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        for client in tunnel_clients:
            client.send_signal(signal.SIGTERM)
        for client in tunnel_clients:
            client.wait(30)
    text = log.read_text()
    result["handed"] = {
        m[1]: (int(m[2]), int(m[3]))
        for m in re.finditer(r"worker (\d+): handed (\d+) connections .*?adopted (\d+)", text)
    }
    result["pids"] = {
        m[1]: int(m[2]) for m in re.finditer(r"worker (\d+) started \(pid (\d+)\)", text)
    }
    return result


async def descriptors_only(count: int) -> float:
    """Seconds per hand-off of the descriptor passing alone (uvloop, one process)."""
    import asyncio

    from ytun.cluster.handoff import HandOffReceiver, HandOffSender

    done = asyncio.Event()
    received = 0

    def adopt(conn: socket.socket, kind: str, data: bytes) -> None:
        nonlocal received
        conn.close()
        received += 1
        if received == count:
            done.set()

    class _Held(asyncio.Protocol):
        pass

    loop = asyncio.get_running_loop()
    directory = tempfile.mkdtemp(prefix="ytun-bench-fd-")
    receiver = HandOffReceiver(directory, "1", adopt)
    receiver.start()
    sender = HandOffSender(directory)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    accepted.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(_Held, accepted)
    head = b"GET / HTTP/1.1\r\nHost: h0.bench:8000\r\n\r\n"
    started = time.process_time()
    for n in range(count):
        sender.send("1", "http", transport, head)
        if n % 64 == 63:
            await asyncio.sleep(0)  # let the receiver keep up
    await asyncio.wait_for(done.wait(), 60)
    spent = time.process_time() - started
    transport.abort()
    client.close()
    sender.close()
    receiver.close()
    return spent / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--descriptors-only", type=int, metavar="N", help="see above")
    args = parser.parse_args(argv)
    if args.descriptors_only:
        import uvloop

        each = uvloop.run(descriptors_only(args.descriptors_only))
        print(f"descriptor passing: {each * 1e6:.1f} µs CPU per hand-off (send and receive)")
        return 0
    logs = Path(tempfile.mkdtemp(prefix="ytun-bench-workers-"))
    origin_port = free_port()
    origin = start(
        [sys.executable, "-m", "benchmarks.e2e.origin", "--port", str(origin_port)],
        logs / "origin.log",
    )
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[str, list[dict]] = {}
    try:
        time.sleep(1)
        for _ in range(args.repeat):
            for scenario in ("keepalive", "close"):
                for workers in counts:
                    result = run_once(workers, args.clients, origin_port, scenario, args, logs)
                    results.setdefault(f"{scenario} w{workers}", []).append(result)
                    print(f"{scenario:9} workers={workers}: {json.dumps(result)}", flush=True)
            result = run_once(2, 1, origin_port, "handoff", args, logs)
            results.setdefault("handoff w2", []).append(result)
            print(f"handoff   workers=2 1 client: {json.dumps(result)}", flush=True)
    finally:
        origin.send_signal(signal.SIGTERM)
        origin.wait(10)
    print()
    print(
        "| scenario | workers | req/s (each run) | p99 ms (worst) | server CPU µs / req "
        "| server context switches / req |"
    )
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        scenario, workers = name.split(" w")
        rps = ", ".join(f"{run['rps']:.0f}" for run in runs)
        p99 = max(run["p99_ms"] for run in runs)
        requests = [run["rps"] * args.duration for run in runs]
        per = sorted(
            sum(r["cpu_s"].values()) / n * 1e6 for r, n in zip(runs, requests, strict=True)
        )
        ctx = sorted(r["switches"] / n for r, n in zip(runs, requests, strict=True))
        middle = len(runs) // 2
        print(
            f"| {scenario} | {workers} | {rps} | {p99:.1f} | {per[middle]:.0f} "
            f"| {ctx[middle]:.2f} |"
        )
    for scenario in ("keepalive", "close"):
        one, two = results.get(f"{scenario} w1"), results.get(f"{scenario} w2")
        if one and two:
            ratio = (
                sorted(r["rps"] for r in two)[len(two) // 2]
                / sorted(r["rps"] for r in one)[len(one) // 2]
            )
            print(f"{scenario}: workers 2 / workers 1 = {ratio:.2f} (medians)")
    for run in results.get("handoff w2", []):
        handed = run["handed"]
        sender = max(handed, key=lambda node: handed[node][0])
        requests = run["rps"] * args.duration
        by_node = run["pids"]
        sent, _ = handed[sender]
        holder = next(node for node in handed if node != sender)
        sender_cpu = run["cpu_s"][str(by_node[sender])]
        holder_cpu = run["cpu_s"][str(by_node[holder])]
        print(
            f"handoff: {sent} of {requests:.0f} requests handed over; sending worker "
            f"{sender_cpu / max(sent, 1) * 1e6:.0f} µs CPU per hand-off; holding worker "
            f"{holder_cpu / requests * 1e6:.0f} µs CPU per request"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(f"logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
