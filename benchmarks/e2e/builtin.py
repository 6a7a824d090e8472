"""The built-in load generator (asyncio + uvloop + httptools), for machines without wrk or hey.

It is a fallback, not a peer of wrk: one Python process cannot load a fast server as hard
as wrk's C threads can, so its req/s are a floor. The smoke test uses it because it needs
nothing outside Python. Each mode prints one JSON object on stdout:

    python -m benchmarks.e2e.builtin load --port P [--host H] -c N -d SECONDS [--close]
    python -m benchmarks.e2e.builtin download --port P [--host H] --size BYTES
    python -m benchmarks.e2e.builtin upload --port P [--host H] --size BYTES

``--tls-ca FILE`` speaks HTTPS instead, verifying the server with that CA certificate.

Latency is measured from just before the request is written (and, for a new connection,
before the connect) to the last byte of the response, as hey does. Errors are connect
failures, resets, timeouts and non-2xx answers. Only 127.0.0.1 is ever dialled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import ssl
import sys
import time
from collections import Counter

import httptools

TARGET = "127.0.0.1"
CHUNK = 1024 * 1024


class _Conn(asyncio.Protocol):
    """One client connection; ``request()`` returns a future of (status, keep_alive)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, data: bytes) -> asyncio.Future:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad response: {exc}"))
            self.close()

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), self.parser.should_keep_alive()))

    def eof_received(self) -> bool:
        self._fail(ConnectionResetError("closed by peer before the response ended"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection lost"))

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, math.ceil(fraction * len(values)) - 1))
    return values[index]  # nearest rank


def _context(tls_ca: str | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=tls_ca) if tls_ca else None


async def load(
    port: int,
    host: str | None,
    connections: int,
    duration: float,
    close: bool,
    timeout: float,
    tls_ca: str | None = None,
) -> dict:
    context = _context(tls_ca)
    loop = asyncio.get_running_loop()
    host_header = host or f"{TARGET}:{port}"
    request = (
        f"GET / HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: ytun-e2e\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    ).encode()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    deadline = loop.time() + duration

    async def worker() -> None:
        conn: _Conn | None = None
        while loop.time() < deadline:
            start = time.perf_counter()
            try:
                if conn is None or conn.closed:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(_Conn, TARGET, port, ssl=context), timeout
                    )
                status, keep_alive = await asyncio.wait_for(conn.request(request), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                errors["timeout"] += 1
            except OSError as exc:
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)  # do not spin on a refused connect
            else:
                if loop.time() > deadline:
                    break
                latencies.append(time.perf_counter() - start)
                statuses[status] += 1
                if close or not keep_alive:
                    conn.close()
                    conn = None
                continue
            if conn is not None:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    started = loop.time()
    tasks = [asyncio.ensure_future(worker()) for _ in range(connections)]
    await asyncio.wait(tasks, timeout=duration + timeout + 1)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = min(loop.time() - started, duration) or duration
    latencies.sort()
    non_2xx = sum(n for status, n in statuses.items() if not 200 <= status < 300)
    p50, p99 = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
        "socket_errors": sum(errors.values()),
        "non_2xx": non_2xx,
        "errors": sum(errors.values()) + non_2xx,
        "error_detail": dict(errors)
        | {f"status {s}": n for s, n in statuses.items() if not 200 <= s < 300},
    }


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """Read one response with Content-Length; returns (status, body bytes seen, body head)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    if status == 100:
        return await _read_response(reader)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    seen, first = 0, b""
    while seen < length:
        data = await reader.read(min(CHUNK, length - seen))
        if not data:
            raise ConnectionResetError(f"body ended after {seen} of {length} bytes")
        if len(first) < 64:
            first += data[:64]
        seen += len(data)
    return status, seen, first


async def transfer(
    mode: str, port: int, host: str | None, size: int, tls_ca: str | None = None
) -> dict:
    host_header = host or f"{TARGET}:{port}"
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        TARGET, port, limit=4 * CHUNK, ssl=_context(tls_ca)
    )
    try:
        if mode == "download":
            writer.write(
                f"GET /bytes?n={size} HTTP/1.1\r\nHost: {host_header}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            status, seen, _ = await _read_response(reader)
            ok = status == 200 and seen == size
        else:
            writer.write(
                f"POST /upload HTTP/1.1\r\nHost: {host_header}\r\nContent-Length: {size}"
                "\r\nContent-Type: application/octet-stream\r\nConnection: close"
                "\r\n\r\n".encode()
            )
            block = bytes(CHUNK)
            left = size
            while left:
                piece = block[: min(left, CHUNK)]
                writer.write(piece)
                left -= len(piece)
                await writer.drain()
            status, _, body = await _read_response(reader)
            ok = status == 200 and body.strip() == str(size).encode()
    finally:
        writer.close()
    elapsed = time.perf_counter() - start
    return {
        "status": status,
        "bytes": size if ok else 0,
        "seconds": elapsed,
        "bytes_per_s": size / elapsed if ok else 0.0,
        "ok": ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.e2e.builtin", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("mode", choices=["load", "download", "upload"])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--host", help="Host header (default 127.0.0.1:PORT)")
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--close", action="store_true", help="a new connection per request")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--size", type=int, default=CHUNK, help="transfer size in bytes")
    parser.add_argument("--tls-ca", help="speak HTTPS, verifying the server with this CA (PEM)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.mode == "load":
        result = runner(
            load(
                args.port,
                args.host,
                args.connections,
                args.duration,
                args.close,
                args.timeout,
                args.tls_ca,
            )
        )
    else:
        try:
            result = runner(transfer(args.mode, args.port, args.host, args.size, args.tls_ca))
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            result = {
                "status": 0,
                "bytes": 0,
                "seconds": 0.0,
                "bytes_per_s": 0.0,
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
            }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
