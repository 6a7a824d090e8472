"""How N processes should share one listening port: each with its own SO_REUSEPORT
socket, or all accepting on one socket inherited from the parent.

    .venv/bin/python -m benchmarks.accept_sharing [--processes 2] [--duration 5]

Needs wrk. Each process is a minimal uvloop HTTP responder (no tunnel), so the numbers
are the accept path's own. For each way it reports req/s with a new connection per
request (where accepting is the work) and how the connections were spread: the share of
the busiest process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class _Reply(asyncio.Protocol):
    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).accepted += 1
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(ANSWER)  # type: ignore[attr-defined]
            self.transport.close()


async def _serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Reply, sock=sock)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    print(f"accepted {_Reply.accepted}", flush=True)


def child(mode: str, port: int, fd: int) -> None:
    import uvloop

    if mode == "reuseport":
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
    else:
        sock = socket.socket(fileno=fd)
    uvloop.run(_serve(sock))


def measure(mode: str, processes: int, duration: float) -> tuple[float, list[int]]:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if mode == "inherit":
        listener.listen(1024)
    children = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "benchmarks.accept_sharing", "--child", mode),
                *(str(port), str(listener.fileno())),
            ],
            pass_fds=(listener.fileno(),),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    time.sleep(1.5)
    out = subprocess.run(
        [
            *("wrk", "-t2", "-c64", f"-d{duration:g}s", "-H", "Connection: close"),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    counts = []
    for proc in children:
        proc.send_signal(signal.SIGTERM)
        counts.append(int(proc.communicate(timeout=10)[0].split()[-1]))
    listener.close()
    return rps, counts


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.processes} processes, wrk -c64 Connection: close")
    for _ in range(args.repeat):
        for mode in ("reuseport", "inherit"):
            rps, counts = measure(mode, args.processes, args.duration)
            share = max(counts) / max(sum(counts), 1)
            print(f"{mode:9}: {rps:8.0f} req/s  accepted {counts}  busiest {share:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
