"""The small HTTP server behind the admin API and the inspector: routing, limits, errors,
keep-alive and server-sent events, over real loopback connections on both loops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from ytun.control import web


async def _server(router: web.Router, **kwargs: object) -> tuple[asyncio.AbstractServer, int]:
    server = await web.serve(router, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
    return server, server.sockets[0].getsockname()[1]


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def _status_and_json(answer: bytes) -> tuple[int, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None


def _router() -> web.Router:
    router = web.Router()

    async def echo(request: web.Request, name: str) -> web.Response:
        return web.json_response(200, {"name": name, "body": request.json(), "q": request.query})

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("kaboom")

    async def refused(request: web.Request) -> web.Response:
        raise web.WebError(409, "taken")

    router.add("POST", "/things/{name}", echo)
    router.add("GET", "/broken", broken)
    router.add("GET", "/refused", refused)
    return router


async def test_path_parameters_are_decoded_and_json_bodies_parsed() -> None:
    server, port = await _server(_router())
    body = b'{"a": 1}'
    answer = await _exchange(
        port,
        b"POST /things/a%%2Fb?x=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    server.close()
    assert _status_and_json(answer) == (200, {"name": "a/b", "body": {"a": 1}, "q": {"x": "1"}})


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /nowhere HTTP/1.1\r\nHost: h\r\n\r\n", 404),
        (b"GET /things/x HTTP/1.1\r\nHost: h\r\n\r\n", 405),
        (b"GET /broken HTTP/1.1\r\nHost: h\r\n\r\n", 500),
        (b"GET /refused HTTP/1.1\r\nHost: h\r\n\r\n", 409),
        (b"POST /things/x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n{x}", 400),
        (b"BLAH\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 400),
    ],
)
async def test_every_error_is_json_with_a_reason(raw: bytes, status: int) -> None:
    server, port = await _server(_router())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    server.close()
    assert int(head.split()[1]) == status
    assert json.loads(body)["error"]
    assert b"kaboom" not in body  # an internal error's detail goes to the log only


async def test_an_oversized_body_gets_413_and_a_closed_connection() -> None:
    server, port = await _server(_router(), max_body=1000)
    answer = await _exchange(
        port,
        b"POST /things/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
    )
    server.close()
    assert _status_and_json(answer)[0] == 413


async def test_an_oversized_head_gets_431() -> None:
    server, port = await _server(_router())
    answer = await _exchange(
        port, b"GET /broken HTTP/1.1\r\nX-Big: " + b"a" * (web.MAX_HEAD_SIZE + 10)
    )
    server.close()
    assert _status_and_json(answer)[0] == 431


async def test_keep_alive_serves_requests_one_after_another() -> None:
    server, port = await _server(_router())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for name in ("one", "two"):
        writer.write(
            b"POST /things/%s HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n" % name.encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert json.loads(await reader.readexactly(length))["name"] == name
    writer.close()
    server.close()


async def test_a_request_that_stalls_gets_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web, "REQUEST_TIMEOUT", 0.2)
    server, port = await _server(_router())
    answer = await _exchange(port, b"GET /broken HTTP/1.1\r\nHost")
    server.close()
    assert _status_and_json(answer)[0] == 408


async def test_events_are_streamed_and_stop_when_the_peer_leaves() -> None:
    finished = asyncio.Event()

    async def ticks() -> AsyncIterator[str]:
        try:
            for count in range(1000):
                yield f"tick {count}\nsecond line"
                await asyncio.sleep(0.01)
        finally:
            finished.set()

    async def events(request: web.Request) -> web.EventStream:
        return web.EventStream(ticks())

    router = web.Router()
    router.add("GET", "/events", events)
    server, port = await _server(router)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /events HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
    writer.close()
    await asyncio.wait_for(finished.wait(), 5)
    server.close()
    assert b"text/event-stream" in head
    assert first == b"data: tick 0\ndata: second line\n\n"


async def test_a_guard_checks_every_route_but_public_ones() -> None:
    def guard(request: web.Request) -> web.Response | None:
        if request.headers.get("authorization") == "Bearer right":
            return None
        return web.error_response(401, "a token is needed")

    async def ok(request: web.Request) -> web.Response:
        return web.json_response(200, {"ok": True})

    router = web.Router(guard)
    router.add("GET", "/private", ok)
    router.add("GET", "/health", ok, public=True)
    server, port = await _server(router)
    close = b"Host: h\r\nConnection: close\r\n"
    without = await _exchange(port, b"GET /private HTTP/1.1\r\n" + close + b"\r\n")
    wrong_method = await _exchange(port, b"POST /private HTTP/1.1\r\n" + close + b"\r\n")
    right = await _exchange(
        port, b"GET /private HTTP/1.1\r\n" + close + b"Authorization: Bearer right\r\n\r\n"
    )
    public = await _exchange(port, b"GET /health HTTP/1.1\r\n" + close + b"\r\n")
    server.close()
    assert _status_and_json(without)[0] == 401
    assert _status_and_json(wrong_method)[0] == 401
    assert _status_and_json(right) == (200, {"ok": True})
    assert _status_and_json(public) == (200, {"ok": True})


async def test_a_guard_answers_unknown_paths_too() -> None:
    """Without the token, a 404 would tell which paths exist: the guard answers first."""

    def guard(request: web.Request) -> web.Response | None:
        if request.headers.get("authorization") == "Bearer right":
            return None
        return web.error_response(401, "a token is needed")

    router = web.Router(guard)
    server, port = await _server(router)
    close = b"Host: h\r\nConnection: close\r\n"
    without = await _exchange(port, b"GET /nowhere HTTP/1.1\r\n" + close + b"\r\n")
    right = await _exchange(
        port, b"GET /nowhere HTTP/1.1\r\n" + close + b"Authorization: Bearer right\r\n\r\n"
    )
    server.close()
    assert _status_and_json(without)[0] == 401
    assert _status_and_json(right)[0] == 404


async def test_a_204_carries_no_body_and_no_length() -> None:
    async def gone(request: web.Request) -> web.Response:
        return web.Response(204, b"ignored")

    router = web.Router()
    router.add("DELETE", "/thing", gone)
    router.add("GET", "/thing", gone)
    server, port = await _server(router)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Two on one connection: the second answer starts right after the first head.
    for method in (b"DELETE", b"GET"):
        writer.write(method + b" /thing HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
        assert b"content-length" not in head.lower()
        assert b"content-type" not in head.lower()
    writer.close()
    server.close()
    assert not await asyncio.wait_for(reader.read(), 5)
