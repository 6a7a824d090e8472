"""The admin API's round trip on loopback: ``POST /hosts`` (a fresh identifier, stored
before the answer) on the in-memory registry and on SQLite (``--state``: an fsync per
change), and ``GET /clients``. One new connection per request, as ``ytun hosts`` makes."""

from __future__ import annotations

import asyncio
import itertools
import pathlib

import pytest
import uvloop

from ytun import MemoryRegistry, Server, SqliteRegistry
from ytun.control.admin import AdminApi

TOKEN = "bench-token"


async def _call(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    return answer


def _post(host: str) -> bytes:
    body = b'{"host": "%s"}' % host.encode()
    return (
        b"POST /hosts HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
        % (TOKEN.encode(), len(body), body)
    )


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_bench_post_hosts(benchmark, tmp_path: pathlib.Path, store: str) -> None:
    loop = uvloop.new_event_loop()
    registry = SqliteRegistry(tmp_path / "ytun.db") if store == "sqlite" else MemoryRegistry()
    server = Server(registry=registry)
    api = AdminApi(server, token=TOKEN)
    listener = loop.run_until_complete(api.serve("127.0.0.1", 0))
    port = listener.sockets[0].getsockname()[1]
    counter = itertools.count()
    try:

        def one() -> bytes:
            return loop.run_until_complete(_call(port, _post(f"h{next(counter)}.test")))

        answer = benchmark(one)
        assert answer.startswith(b"HTTP/1.1 201 ")
        assert len(server.hosts()) == next(counter)
    finally:
        listener.close()
        loop.run_until_complete(server.close(grace=0))
        registry.close()
        loop.close()


def test_bench_get_clients(benchmark) -> None:
    loop = uvloop.new_event_loop()
    server = Server()
    api = AdminApi(server, token=TOKEN)
    listener = loop.run_until_complete(api.serve("127.0.0.1", 0))
    port = listener.sockets[0].getsockname()[1]
    request = (
        b"GET /clients HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n"
        b"Authorization: Bearer %s\r\n\r\n" % TOKEN.encode()
    )
    try:
        answer = benchmark(lambda: loop.run_until_complete(_call(port, request)))
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        listener.close()
        loop.run_until_complete(server.close(grace=0))
        loop.close()
