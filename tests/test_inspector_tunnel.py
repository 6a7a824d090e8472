"""The inspector on a real tunnel: public client → ytun Server → ytun Client (with an
Inspector) → an origin that counts its hits. Its JSON API lists what went through, masks
secrets, streams changes as server-sent events, and a replay reaches the origin again."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

import aiohttp
import pytest
from aiohttp import web
from tunnel_helpers import Tunnel

from ytun.errors import InspectorError
from ytun.inspector import Inspector
from ytun.tunnel import koding as koding_protocols
from ytun.tunnel.client import _pipe_for
from ytun.tunnel.splice import Pipe
from ytun.tunnel.tap import TappedPipe

TIMEOUT = aiohttp.ClientTimeout(total=20)


def counting_origin() -> tuple[web.Application, Counter[str]]:
    hits: Counter[str] = Counter()

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        hits[request.path] += 1
        # says whether the real secret arrived, without echoing it
        auth = "ok" if request.headers.get("Authorization") == "Bearer tok-SECRET" else "none"
        return web.Response(
            text=f"{request.method} {request.path} {len(body)} auth={auth}",
            headers={"Set-Cookie": "session=origin-secret", "X-Hit": str(hits[request.path])},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app, hits


async def wait_for(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def fetch(tunnel: Tunnel, path: str) -> bytes:
    """GET ``path`` through the tunnel's public side."""
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as public,
        public.get(f"{tunnel.url}{path}", headers={"Host": tunnel.host}) as response,
    ):
        assert response.status == 200
        return await response.read()


@pytest.fixture
async def inspector():  # type: ignore[no-untyped-def]
    inspector = Inspector()
    await inspector.start("127.0.0.1", 0)
    yield inspector
    await inspector.close()


async def test_requests_through_the_tunnel_are_listed_masked_and_replayed(inspector) -> None:
    app, hits = counting_origin()
    async with Tunnel(app=app, client_kwargs={"inspector": inspector}) as tunnel:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as public,
            public.post(
                f"{tunnel.url}/orders?id=7",
                data=b'{"qty": 2}',
                headers={"Host": tunnel.host, "Authorization": "Bearer tok-SECRET"},
            ) as response,
        ):
            assert response.status == 200
            assert await response.text() == "POST /orders 10 auth=ok"
        assert hits["/orders"] == 1
        await wait_for(lambda: any(e.state == "complete" for e in inspector.log.newest_first()))

        async with aiohttp.ClientSession(inspector.url, timeout=TIMEOUT) as api:
            async with api.get("/api/requests") as response:
                listing = await response.json()
            (entry,) = listing["requests"]
            assert (entry["method"], entry["path"], entry["status"]) == (
                "POST",
                "/orders?id=7",
                200,
            )
            assert entry["request_size"] == 10 and entry["response_size"] > 0
            assert entry["duration_ms"] >= 0 and entry["replay_of"] is None

            async with api.get(f"/api/requests/{entry['id']}") as response:
                text = await response.text()
            assert "tok-SECRET" not in text and "origin-secret" not in text
            view = json.loads(text)
            headers = {name.lower(): value for name, value in view["request"]["headers"]}
            assert headers["authorization"] == "••••"
            assert headers["x-forwarded-for"] == "127.0.0.1"  # the server's own header
            assert view["request"]["body"]["text"] == '{"qty": 2}'
            assert dict(view["response"]["headers"])["Set-Cookie"] == "••••"

            async with api.post(f"/api/requests/{entry['id']}/replay") as response:
                assert response.status == 201
                replayed = await response.json()
            assert hits["/orders"] == 2  # the origin saw it again
            assert replayed["replay_of"] == entry["id"] and replayed["status"] == 200
            assert dict(replayed["response"]["headers"])["X-Hit"] == "2"
            # the real Authorization went out again, and is still masked in the answer
            assert "tok-SECRET" not in json.dumps(replayed)
            assert replayed["response"]["body"]["text"] == "POST /orders 10 auth=ok"

            async with api.get("/api/requests") as response:
                listing = await response.json()
            assert [e["replay_of"] for e in listing["requests"]] == [entry["id"], None]


async def test_keep_alive_chunked_and_websocket_streams_are_recorded(inspector) -> None:
    async with Tunnel(client_kwargs={"inspector": inspector}) as tunnel:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as public:
            for index in range(3):  # one keep-alive connection: one tunnel stream
                async with public.get(
                    f"{tunnel.url}/?echo=n{index}", headers={"Host": tunnel.host}
                ) as response:
                    assert await response.text() == f"n{index}"

            async def chunks():  # type: ignore[no-untyped-def]
                yield b"abc"
                yield b"defg"

            async with public.post(
                f"{tunnel.url}/upload", data=chunks(), headers={"Host": tunnel.host}
            ) as response:
                assert (await response.text()).startswith("7 ")
            async with public.ws_connect(f"{tunnel.url}/ws", headers={"Host": tunnel.host}) as ws:
                await ws.send_str("ping")
                assert (await ws.receive()).data == "ping"
        await wait_for(
            lambda: len(inspector.log) == 5 and inspector.log.newest_first()[0].state != "pending"
        )
        ws_entry, upload, *echoes = inspector.log.newest_first()
        assert [e.target for e in reversed(echoes)] == ["/?echo=n0", "/?echo=n1", "/?echo=n2"]
        assert all(e.status == 200 and e.state == "complete" for e in echoes)
        assert upload.request.chunked and bytes(upload.request.body).endswith(b"0\r\n\r\n")
        assert (ws_entry.status, ws_entry.state) == (101, "upgraded")


async def test_the_live_feed_announces_a_request_as_it_happens(inspector) -> None:
    async with (
        Tunnel(client_kwargs={"inspector": inspector}) as tunnel,
        aiohttp.ClientSession(inspector.url, timeout=TIMEOUT) as api,
        api.get("/api/events") as events,
    ):
        assert events.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(events.content.readline(), 10)
        assert b'"hello"' in first
        assert await fetch(tunnel, "/?echo=live") == b"live"
        seen = []
        while not any('"changed"' in line for line in seen):
            line = await asyncio.wait_for(events.content.readline(), 10)
            if line.startswith(b"data: "):
                seen.append(line.decode())
        assert '"added"' in seen[0] and "/?echo=live" in seen[0]


async def test_the_api_answers_errors_in_json(inspector) -> None:
    app, hits = counting_origin()
    small = Inspector(body_limit=4)
    await small.start("127.0.0.1", 0)
    try:
        async with Tunnel(app=app, client_kwargs={"inspector": small}) as tunnel:
            async with (
                aiohttp.ClientSession(timeout=TIMEOUT) as public,
                public.post(
                    f"{tunnel.url}/big", data=b"x" * 100, headers={"Host": tunnel.host}
                ) as response,
            ):
                await response.read()
            await wait_for(lambda: small.log.newest_first()[0].state == "complete")
            async with aiohttp.ClientSession(small.url, timeout=TIMEOUT) as api:
                async with api.post("/api/requests/1/replay") as response:
                    assert response.status == 409
                    assert "larger than the capture limit" in (await response.json())["error"]
                async with api.get("/api/requests/999") as response:
                    assert response.status == 404
                    assert "error" in await response.json()
                async with api.get("/api/requests/x%2F..") as response:
                    assert response.status == 404
                async with api.get("/static/../inspector.py") as response:
                    assert response.status == 404
                async with api.put("/api/requests/1/replay") as response:
                    assert response.status == 405
                # a page elsewhere that rebinds its name to 127.0.0.1
                async with api.get(
                    "/api/requests", headers={"Host": "evil.example:80"}
                ) as response:
                    assert response.status == 403
                # a page of another origin posting to the inspector
                async with api.post(
                    "/api/requests/1/replay", headers={"Origin": "http://evil.example"}
                ) as response:
                    assert response.status == 403
                async with api.delete("/api/requests") as response:
                    assert response.status == 200
                assert len(small.log) == 0
            assert hits["/big"] == 1  # nothing was replayed
    finally:
        await small.close()


async def test_a_replay_to_a_local_service_that_is_gone_is_a_502(inspector) -> None:
    tunnel = Tunnel(client_kwargs={"inspector": inspector})
    async with tunnel:
        await fetch(tunnel, "/?echo=1")
        await wait_for(lambda: inspector.log.newest_first()[0].state == "complete")
    # the origin is stopped with the tunnel
    async with (
        aiohttp.ClientSession(inspector.url, timeout=TIMEOUT) as api,
        api.post("/api/requests/1/replay") as response,
    ):
        assert response.status == 502
        assert "cannot reach the local service" in (await response.json())["error"]


async def test_the_page_and_its_files_are_served_from_the_package(inspector) -> None:
    async with aiohttp.ClientSession(inspector.url, timeout=TIMEOUT) as api:
        async with api.get("/") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            page = await response.text()
        assert "/static/inspector.js" in page and "http" not in page.replace("http-equiv", "")
        for name, kind in (("inspector.js", "text/javascript"), ("inspector.css", "text/css")):
            async with api.get(f"/static/{name}") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith(kind)
                assert "//cdn" not in await response.text()


async def test_a_failing_observer_never_breaks_the_tunnel(caplog) -> None:
    class Broken:
        def observe(self, protocol: int, local_port: int):  # type: ignore[no-untyped-def]
            return self

        def local_connected(self, address: object) -> None:
            pass

        def request_data(self, data: bytes) -> None:
            raise RuntimeError("observer bug")

        response_data = request_data

        def response_eof(self) -> None:
            pass

        def closed(self) -> None:
            pass

    caplog.set_level(logging.ERROR, "ytun.tap")
    async with Tunnel(client_kwargs={"inspector": Broken()}) as tunnel:
        for _ in range(2):
            assert len(await fetch(tunnel, "/bytes?n=300000")) == 300000
    assert "stops watching that stream" in caplog.text


def test_without_an_inspector_streams_get_the_plain_pipe() -> None:
    for protocol in (koding_protocols.HTTP, koding_protocols.WS, koding_protocols.TCP):
        message = koding_protocols.ControlMessage(action=0, protocol=protocol, local_port=80)
        assert type(_pipe_for(None, message)) is Pipe
    inspector = Inspector()
    http = koding_protocols.ControlMessage(action=0, protocol=koding_protocols.HTTP, local_port=80)
    tcp = koding_protocols.ControlMessage(action=0, protocol=koding_protocols.TCP, local_port=22)
    assert type(_pipe_for(inspector, http)) is TappedPipe
    assert type(_pipe_for(inspector, tcp)) is Pipe  # TCP tunnels are not HTTP


async def test_the_inspector_listens_on_loopback_unless_told_otherwise(caplog) -> None:
    inspector = Inspector()
    with pytest.raises(InspectorError, match="reachable from other machines"):
        await inspector.start("0.0.0.0", 0)
    with pytest.raises(InspectorError, match="reachable from other machines"):
        await inspector.start("", 0)
    caplog.set_level(logging.WARNING, "ytun.inspector")
    await inspector.start("0.0.0.0", 0, allow_remote=True)
    try:
        assert "reachable from other machines" in caplog.text
    finally:
        await inspector.close()
