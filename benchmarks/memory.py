"""Memory per stream and per client, measured (loopback only, bounded in time).

    python -m benchmarks.memory [--streams 10000] [--clients 1000] [--json FILE]

* streams: one yamux session pair in this process; N streams opened, each carrying a
  few bytes each way and left open; the process's RSS growth divided by N.
* clients: ``ytun server`` in a subprocess with one virtual host per client; N
  ``ytun.Client`` objects in this process connect to it; the server's RSS growth divided
  by N (only the server's memory is counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import uvloop

from ytun import Client
from ytun.yamux import Config, Session, StreamConnection


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def streams_on_one_session(count: int) -> dict:
    loop = asyncio.get_running_loop()
    config = Config(max_streams=count + 16)
    accepted: list[StreamConnection] = []
    made: asyncio.Future[Session] = loop.create_future()

    def accept() -> StreamConnection:
        accepted.append(StreamConnection())
        return accepted[-1]

    def server_side() -> Session:
        session = Session(client=False, config=config, protocol_factory=accept)
        made.set_result(session)
        return session

    listener = await loop.create_server(server_side, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(
        lambda: Session(client=True, config=config), "127.0.0.1", port
    )
    server = await asyncio.wait_for(made, 5)
    await asyncio.sleep(0.2)
    before = rss_kib()
    started = time.perf_counter()
    opened = []
    for _ in range(count):
        _, connection = await client.open_stream(StreamConnection)
        connection.write(b"ping")
        opened.append(connection)
    while len(accepted) < count:
        await asyncio.sleep(0.01)
    for connection in accepted:
        assert await asyncio.wait_for(connection.readexactly(4), 10) == b"ping"
        connection.write(b"pong")
    for connection in opened:
        assert await asyncio.wait_for(connection.readexactly(4), 10) == b"pong"
    elapsed = time.perf_counter() - started
    after = rss_kib()
    result = {
        "streams": count,
        "open_streams_client": client.stream_count,
        "open_streams_server": server.stream_count,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_stream_pair": round((after - before) * 1024 / count),
        "seconds_to_open": round(elapsed, 2),
    }
    client.abort()
    server.abort()
    listener.close()
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def clients_on_one_server(count: int) -> dict:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ytun",
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ]
    for index in range(count):
        command += ["--host", f"c{index}.bench.local={index:08d}-memory-bench"]
    server = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    clients: list[Client] = []
    tasks = []
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(server.stdout.readline(), 30)
        assert b"listening" in line, line
        await asyncio.sleep(0.5)
        before = rss_kib(server.pid)
        started = time.perf_counter()
        for index in range(count):
            client = Client(
                f"127.0.0.1:{port}", f"{index:08d}-memory-bench", local_addr="127.0.0.1:9"
            )
            clients.append(client)
            tasks.append(asyncio.ensure_future(client.start()))
            if index % 50 == 49:
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*(c.wait_connected() for c in clients)), 120)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.5)
        after = rss_kib(server.pid)
        return {
            "clients": count,
            "server_rss_before_kib": before,
            "server_rss_after_kib": after,
            "server_bytes_per_client": round((after - before) * 1024 / count),
            "seconds_to_connect": round(elapsed, 2),
        }
    finally:
        await asyncio.gather(*(c.close(grace=0.1) for c in clients), return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 10)
        except asyncio.TimeoutError:
            server.kill()


async def main(args: argparse.Namespace) -> dict:
    results = {}
    if args.streams:
        results["streams"] = await streams_on_one_session(args.streams)
        print(json.dumps(results["streams"]), flush=True)
    if args.clients:
        results["clients"] = await clients_on_one_server(args.clients)
        print(json.dumps(results["clients"]), flush=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=1_000)
    parser.add_argument("--json", help="write the results here")
    arguments = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    outcome = uvloop.run(asyncio.wait_for(main(arguments), 600))
    if arguments.json:
        with open(arguments.json, "w") as out:
            json.dump(outcome, out, indent=2)
