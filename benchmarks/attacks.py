"""Attack scenarios against a running ``ytun server``, for figures, not for pass/fail.

    python -m benchmarks.attacks [--tree DIR] [--duration 4] [--json FILE]

Each scenario starts a fresh ``ytun server`` (from ``--tree``, default this checkout, so an
older checkout can be measured side by side), attacks it from this process over loopback
for ``--duration`` seconds, and reports the server's RSS before, at the end of the attack
and one second later, plus the latency of an ordinary request during the attack:

* refused-connects: connections pipelining CONNECTs with unique 60 KB identifiers;
* syn-rst-flood: a client that passes the handshake, then floods stream opens and resets
  and never reads what the server answers;
* slowloris: 1,000 connections each sending one byte of a request head per second; the
  report says how many the server still holds at the end.

Everything goes to 127.0.0.1 and stops by itself. The answers to the ordinary requests are
the server's own (502 for an unknown host), so they measure the server's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

HEADER = struct.Struct(">BBHII")
SYN, RST = 0x1, 0x8
DATA, WINDOW_UPDATE = 0, 1
IDENTIFIER = "ATTACK-BENCH-" + secrets.token_hex(8)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connections_of(pid: int, port: int) -> int:
    """ESTABLISHED TCP connections on ``port`` held by the process (from /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


class ServerProcess:
    def __init__(self, tree: Path, port: int) -> None:
        self.port = port
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ytun",
                "server",
                "--listen",
                f"127.0.0.1:{port}",
                "--host",
                f"tenant.test={IDENTIFIER}",
                "--log-level",
                "error",
            ],
            cwd=tree,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def ready(self) -> None:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def probe_latency(port: int, stop: asyncio.Event) -> list[float]:
    """Ordinary requests (unknown host: the server answers itself), one at a time."""
    samples = []
    while not stop.is_set():
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(b"GET / HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n")
            await asyncio.wait_for(reader.read(), 10)
            writer.close()
            samples.append((time.perf_counter() - started) * 1000)
        except (OSError, asyncio.TimeoutError):
            samples.append(10_000.0)
        await asyncio.sleep(0.05)
    return samples


async def refused_connects(port: int, stop: asyncio.Event) -> int:
    sent = 0

    async def one_connection() -> None:
        nonlocal sent
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        drain = asyncio.ensure_future(reader.read(-1))
        try:
            while not stop.is_set() and not writer.is_closing():
                batch = b"".join(
                    b"CONNECT /_controlPath/ HTTP/1.1\r\nHost: x\r\nX-Ktunnel-Identifier: "
                    + secrets.token_urlsafe(45_000).encode()
                    + b"\r\n\r\n"
                    for _ in range(4)
                )
                writer.write(batch)
                sent += 4
                await writer.drain()
        except OSError:
            pass
        finally:
            drain.cancel()
            writer.close()

    while not stop.is_set():
        await asyncio.gather(*(one_connection() for _ in range(4)))
    return sent


async def syn_rst_flood(port: int, stop: asyncio.Event) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    transport = writer.transport
    writer.write(
        f"CONNECT /_controlPath/ HTTP/1.1\r\nHost: x\r\nX-Ktunnel-Identifier: {IDENTIFIER}"
        "\r\n\r\n".encode()
    )
    await reader.readuntil(b"\n\n")
    # The control stream and its handshake, as a real client opens them...
    handshake = b"controlHandshake"
    writer.write(HEADER.pack(0, DATA, SYN, 1, len(handshake)) + handshake)
    transport.pause_reading()  # ...then never read again: the server's answers pile up
    # One stream ID, opened and reset over and over (legal: a reset stream is gone), so
    # one prebuilt megabyte of frames can be written as fast as the socket takes it.
    pair = HEADER.pack(0, WINDOW_UPDATE, SYN, 3, 0) + HEADER.pack(0, WINDOW_UPDATE, RST, 3, 0)
    batch = pair * 43_690
    sent = 0
    try:
        while not stop.is_set() and not writer.is_closing():
            writer.write(batch)
            sent += 43_690
            try:
                await asyncio.wait_for(writer.drain(), 0.2)
            except asyncio.TimeoutError:
                await asyncio.sleep(0)  # the server stopped reading us: keep trying
    except OSError:
        pass
    writer.close()
    return sent


async def slowloris(port: int, stop: asyncio.Event, count: int = 1000) -> int:
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            break
        writers.append(writer)
    head = b"GET / HTTP/1.1\r\nHost: tenant.test\r\nX-Slow: " + b"a" * 10_000
    offset = 0
    while not stop.is_set():
        for writer in writers:
            if not writer.is_closing():
                writer.write(head[offset : offset + 1])
        offset = (offset + 1) % len(head)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    return len(writers)


SCENARIOS = {
    "refused-connects": refused_connects,
    "syn-rst-flood": syn_rst_flood,
    "slowloris": slowloris,
}


async def run_scenario(name: str, tree: Path, duration: float) -> dict:
    port = free_port()
    server = ServerProcess(tree, port)
    try:
        await server.ready()
        await asyncio.sleep(0.3)
        before = rss_mb(server.process.pid)
        stop = asyncio.Event()
        attack = asyncio.ensure_future(SCENARIOS[name](port, stop))
        await asyncio.sleep(0.3)
        probe = asyncio.ensure_future(probe_latency(port, stop))
        await asyncio.sleep(duration)
        end = rss_mb(server.process.pid)
        held = connections_of(server.process.pid, port)
        stop.set()
        sent = await asyncio.wait_for(attack, 30)
        samples = await asyncio.wait_for(probe, 30)
        await asyncio.sleep(1.0)
        after = rss_mb(server.process.pid)
        return {
            "scenario": name,
            "tree": str(tree),
            "attack_units": sent,
            "rss_before_mb": round(before, 1),
            "rss_end_mb": round(end, 1),
            "rss_1s_after_mb": round(after, 1),
            "connections_held_at_end": held,
            "probe_requests": len(samples),
            "probe_p50_ms": round(statistics.median(samples), 2) if samples else None,
            "probe_max_ms": round(max(samples), 2) if samples else None,
            "server_alive": server.process.poll() is None,
        }
    finally:
        server.stop()


async def main_async(args: argparse.Namespace) -> list[dict]:
    results = []
    for tree in args.tree:
        for name in args.scenarios.split(","):
            result = await run_scenario(name, tree, args.duration)
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tree",
        action="append",
        help="source tree(s) whose ytun to run, side by side (default: this checkout)",
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of attack")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    args.tree = [Path(tree).resolve() for tree in args.tree or [Path(__file__).parents[1]]]
    results = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
