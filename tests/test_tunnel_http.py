"""End to end through a real tunnel on loopback: public HTTP and WebSocket clients (aiohttp,
websockets, curl, raw sockets) → ytun Server → ytun Client → origin.

The first group re-expresses koding/tunnel's own acceptance tests (single and concurrent
requests, with and without origin latency, websockets); the rest covers what the original
got wrong or never tested: keep-alive routing across hosts, pipelining, close-framed
responses, chunked uploads, HEAD, bulk transfers, forwarding headers, pipelined WebSocket
bytes, every error body, TLS on both legs, reconnects and a graceful server close."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import shutil
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
import trustme
import websockets
from aiohttp import web
from tunnel_helpers import Tunnel, origin_app, raw_request

from ytun import Client, Server
from ytun.tunnel.client import ExponentialBackoff

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")

TIMEOUT = aiohttp.ClientTimeout(total=20)


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(
    reader: asyncio.StreamReader, *, head_only: bool = False, timeout: float = 10
) -> Response:
    """One HTTP/1.1 response from a raw socket (Content-Length, chunked or close framed)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if head_only or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await asyncio.wait_for(reader.readline(), timeout)).split(b";")[0], 16)
            if not size:
                await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                break
            parts.append(await asyncio.wait_for(reader.readexactly(size + 2), timeout))
        body = b"".join(part[:-2] for part in parts)
    else:
        body = await asyncio.wait_for(reader.read(), timeout)
    return Response(status, headers, body)


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def get(target: str, host: str, *extra: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *extra, "", ""]
    return "\r\n".join(lines).encode()


def tagged_app(tag: str, **kwargs) -> web.Application:
    """origin_app() whose every answer says which origin it came from."""
    app = origin_app(**kwargs)

    async def tag_response(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Origin"] = tag

    app.on_response_prepare.append(tag_response)
    return app


@contextlib.asynccontextmanager
async def second_client(
    tunnel: Tunnel, app: web.Application, host: str = "other.test"
) -> AsyncIterator[Client]:
    """Another origin and another client (own identifier) on ``tunnel``'s server."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    origin_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    identifier = "second-" + host
    tunnel.server.add_host(host, identifier)
    client = Client(
        f"127.0.0.1:{tunnel.port}",
        identifier,
        local_addr=f"127.0.0.1:{origin_port}",
        backoff=ExponentialBackoff(initial=0.05, maximum=0.2),
    )
    task = asyncio.ensure_future(client.start())
    try:
        await client.wait_connected(timeout=10)
        await wait_until(lambda: tunnel.server.is_connected(identifier))
        yield client
    finally:
        await client.close(grace=1)
        await asyncio.wait_for(task, 10)
        await runner.cleanup()


async def wait_until(condition: Callable[[], bool], timeout: float = 5) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


class RawOrigin:
    """A raw asyncio server as the origin; ``handler(reader, writer)`` scripts it."""

    def __init__(
        self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> None:
        self._handler = handler
        self.errors: list[BaseException] = []

    async def __aenter__(self) -> RawOrigin:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # reported by the test, not by the loop
            self.errors.append(exc)
        finally:
            writer.close()

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        await self._server.wait_closed()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def fetch(
    session: aiohttp.ClientSession, tunnel: Tunnel, echo: str, *, close: bool = False
) -> tuple[int, str]:
    headers = {"Host": tunnel.host}
    if close:
        headers["Connection"] = "close"
    async with session.get(f"{tunnel.url}/", params={"echo": echo}, headers=headers) as response:
        return response.status, await response.text()


async def run_curl(*args: str, stdin: bytes | None = None) -> bytes:
    """curl's output; a non-zero exit fails the test with curl's error message."""
    assert CURL is not None
    process = await asyncio.create_subprocess_exec(
        CURL,
        "--silent",
        "--show-error",
        "--max-time",
        "20",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), 30)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err
    return out


# -- koding/tunnel's acceptance tests --------------------------------------------------------


async def test_single_request() -> None:
    async with Tunnel() as t, aiohttp.ClientSession(timeout=TIMEOUT) as session:
        assert await fetch(session, t, "hello tunnel") == (200, "hello tunnel")


async def _many(tunnel: Tunnel, count: int = 100) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        echoes = [f"echo-{i}-{random.getrandbits(32):08x}" for i in range(count)]
        results = await asyncio.gather(
            *(fetch(session, tunnel, echo, close=i % 2 == 0) for i, echo in enumerate(echoes))
        )
    assert results == [(200, echo) for echo in echoes]


async def test_multiple_requests() -> None:
    async with Tunnel() as t:
        await _many(t)


async def test_single_latency_request() -> None:
    app = origin_app(latency=lambda: random.uniform(0, 0.3))
    async with Tunnel(app=app) as t, aiohttp.ClientSession(timeout=TIMEOUT) as session:
        assert await fetch(session, t, "slow") == (200, "slow")


async def test_multiple_latency_requests() -> None:
    async with Tunnel(app=origin_app(latency=lambda: random.uniform(0, 0.3))) as t:
        await _many(t)


async def _websocket_echo(tunnel: Tunnel, count: int) -> None:
    async with websockets.connect(
        f"ws://{tunnel.host}/ws", host="127.0.0.1", port=tunnel.port, proxy=None, open_timeout=10
    ) as ws:
        for i in range(count):
            message = json.dumps({"value": f"message #{i}", "close": i == count - 1})
            await ws.send(message)
            assert await asyncio.wait_for(ws.recv(), 10) == message


async def test_websocket() -> None:
    async with Tunnel() as t:
        await _websocket_echo(t, 100)


async def test_latency_websocket() -> None:
    async with Tunnel(app=origin_app(latency=lambda: random.uniform(0, 0.1))) as t:
        await _websocket_echo(t, 20)


# -- routing on one connection ---------------------------------------------------------------


async def test_keep_alive_connection_alternates_hosts() -> None:
    async with (
        Tunnel(app=tagged_app("A")) as t,
        second_client(t, tagged_app("B")),
        connect(t.port) as (reader, writer),
    ):
        order = ["A", "B", "B", "A", "B", "A", "A"]
        for i, origin in enumerate(order):
            host = t.host if origin == "A" else "other.test"
            writer.write(get(f"/?echo={origin}{i}", host))
            response = await read_response(reader)
            assert response.status == 200
            assert response.headers["x-origin"] == origin
            assert response.body == f"{origin}{i}".encode()


async def test_pipelined_requests_across_hosts_answer_in_order() -> None:
    async with (
        Tunnel(app=tagged_app("A")) as t,
        second_client(t, tagged_app("B")),
        connect(t.port) as (reader, writer),
    ):
        body = b"pipelined body"
        writer.write(
            b"".join(
                [
                    get("/?echo=one", t.host),
                    get("/?echo=two", "other.test"),
                    (
                        b"POST /?echo=three HTTP/1.1\r\nHost: Nope.Test:81\r\n"
                        b"Content-Length: 11\r\n\r\nhello world"
                    ),
                    (
                        f"POST /upload HTTP/1.1\r\nHost: {t.host}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n"
                    ).encode()
                    + body,
                    get("/?echo=five", "other.test"),
                    get("/?echo=six", t.host, "Connection: close"),
                ]
            )
        )
        answers = [await read_response(reader) for _ in range(6)]
        assert [a.status for a in answers] == [200, 200, 502, 200, 200, 200]
        assert answers[0].body == b"one" and answers[0].headers["x-origin"] == "A"
        assert answers[1].body == b"two" and answers[1].headers["x-origin"] == "B"
        assert answers[2].body == b'no virtual host available for "nope.test:81"\n'
        digest = hashlib.sha256(body).hexdigest()
        assert answers[3].body == f"{len(body)} {digest}".encode()
        assert answers[4].body == b"five" and answers[4].headers["x-origin"] == "B"
        assert answers[5].body == b"six" and answers[5].headers["x-origin"] == "A"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the last one


async def test_half_closed_client_gets_its_answers_then_eof() -> None:
    """A client that half-closes after its requests (``nc -N``, ``printf | nc``) reads every
    answer, then EOF: the connection must not stay open forever."""
    async with Tunnel(app=tagged_app("A")) as t, second_client(t, tagged_app("B")):
        cases = [
            [("solo", t.host, "A")],
            [
                ("a1", t.host, "A"),
                ("b1", "other.test", "B"),
                ("x", "nope.test", None),
                ("a2", t.host, "A"),
            ],
        ]
        for case in cases:
            async with connect(t.port) as (reader, writer):
                writer.write(b"".join(get(f"/?echo={echo}", host) for echo, host, _ in case))
                writer.write_eof()
                answers = [await read_response(reader) for _ in case]
                assert await asyncio.wait_for(reader.read(), 5) == b""
            for (echo, _, origin), answer in zip(case, answers, strict=True):
                if origin is None:
                    assert answer.status == 502
                else:
                    assert (answer.status, answer.body, answer.headers["x-origin"]) == (
                        200,
                        echo.encode(),
                        origin,
                    )


async def test_connection_close_request_is_the_last_one() -> None:
    """``Connection: close`` (or HTTP/1.0) ends the public connection after its answer, even
    if the origin would keep its own connection; requests sent after it are not served."""
    seen: list[bytes] = []

    async def keep_alive_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # answers every request, never closes
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")

    async with (
        RawOrigin(keep_alive_origin) as raw,
        Tunnel(client_kwargs={"local_addr": raw.addr}) as t,
    ):
        for first in (
            get("/last", t.host, "Connection: close"),
            f"GET /last HTTP/1.0\r\nHost: {t.host}\r\n\r\n".encode(),
            get("/last", "nope.test", "Connection: close"),
        ):
            seen.clear()
            async with connect(t.port) as (reader, writer):
                writer.write(first + get("/never", t.host))
                response = await read_response(reader)
                assert await asyncio.wait_for(reader.read(), 5) == b""
            assert response.status == (502 if b"nope" in first else 200)
            assert not any(b"/never" in head for head in seen)
    assert not raw.errors


# -- message framing -------------------------------------------------------------------------


async def test_connection_close_framed_response_arrives_whole() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, no Content-Length: ends with the connection

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        for i in range(0, len(payload), 100_000):
            writer.write(payload[i : i + 100_000])
            await writer.drain()

    async with RawOrigin(origin) as raw, Tunnel(client_kwargs={"local_addr": raw.addr}) as t:
        # a raw socket: the answer ends with a clean close
        async with connect(t.port) as (reader, writer):
            writer.write(get("/close-framed", t.host))
            response = await read_response(reader)
        assert response.status == 200 and "content-length" not in response.headers
        assert response.body == payload
        # and aiohttp, which reads such a body to EOF too
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(f"{t.url}/close-framed", headers={"Host": t.host}) as answer,
        ):
            assert await answer.read() == payload
        assert not raw.errors


async def test_chunked_upload() -> None:
    blocks = [random.randbytes(random.randint(1, 70_000)) for _ in range(40)]

    async def body() -> AsyncIterator[bytes]:
        for block in blocks:
            yield block

    data = b"".join(blocks)
    async with (
        Tunnel() as t,
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(f"{t.url}/upload", data=body(), headers={"Host": t.host}) as response,
    ):
        assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert await response.text() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


async def test_head_then_get_on_one_connection() -> None:
    async with Tunnel() as t, connect(t.port) as (reader, writer):
        writer.write(b"HEAD /?echo=headless HTTP/1.1\r\nHost: " + t.host.encode() + b"\r\n\r\n")
        head = await read_response(reader, head_only=True)
        assert head.status == 200 and head.headers["content-length"] == "8"
        writer.write(get("/?echo=after-head", t.host))
        response = await read_response(reader)
        assert (response.status, response.body) == (200, b"after-head")


BULK = 100 * 1024 * 1024


async def test_bulk_download_100mib() -> None:
    expected = hashlib.sha256()
    block = b"\x5a" * (1024 * 1024)
    for _ in range(BULK // len(block)):
        expected.update(block)
    async with (
        Tunnel() as t,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(60)) as s,
        s.get(f"{t.url}/bytes", params={"n": str(BULK)}, headers={"Host": t.host}) as r,
    ):
        assert r.status == 200
        digest = hashlib.sha256()
        total = 0
        async for chunk in r.content.iter_any():
            digest.update(chunk)
            total += len(chunk)
    assert total == BULK
    assert digest.hexdigest() == expected.hexdigest()


async def test_bulk_upload_100mib() -> None:
    block = random.randbytes(1024 * 1024)
    expected = hashlib.sha256()
    for i in range(BULK // len(block)):
        expected.update(struct.pack(">I", i) + block[4:])

    async def body() -> AsyncIterator[bytes]:
        for i in range(BULK // len(block)):
            yield struct.pack(">I", i) + block[4:]

    async with (
        Tunnel() as t,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(60)) as s,
        s.post(
            f"{t.url}/upload", data=body(), headers={"Host": t.host, "Content-Length": str(BULK)}
        ) as r,
    ):
        assert r.status == 200
        assert await r.text() == f"{BULK} {expected.hexdigest()}"


# -- forwarding headers ----------------------------------------------------------------------


async def test_forwarded_headers_added_by_default() -> None:
    async with (
        Tunnel() as t,
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(f"{t.url}/?echo=x", headers={"Host": t.host}) as response,
    ):
        assert response.headers["X-Seen-Forwarded-For"] == "127.0.0.1"
        assert response.headers["X-Seen-Forwarded-Host"] == t.host


async def test_forwarded_headers_can_be_turned_off() -> None:
    async with (
        Tunnel(server=Server(forwarded_headers=False)) as t,
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(f"{t.url}/?echo=x", headers={"Host": t.host}) as response,
    ):
        assert await response.text() == "x"
        assert response.headers["X-Seen-Forwarded-For"] == ""
        assert response.headers["X-Seen-Forwarded-Host"] == ""


# -- websocket with pipelined bytes ----------------------------------------------------------


async def test_websocket_pipelined_bytes_both_ways() -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"upgrade: websocket" in head.lower()
        # the 101 and the first frame bytes in one write
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\nORIGIN-SPOKE-FIRST"
        )
        got = b""
        while len(got) < len(b"CLIENT-SPOKE-FIRST|more"):
            data = await reader.read(65536)
            if not data:
                break
            got += data
        await received.put(got)
        writer.write(b"echo:" + got)
        await writer.drain()
        await reader.read()  # until the public side closes

    async with (
        RawOrigin(origin) as raw,
        Tunnel(client_kwargs={"local_addr": raw.addr}) as t,
        connect(t.port) as (reader, writer),
    ):
        writer.write(
            get(
                "/chat",
                t.host,
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
            )
            + b"CLIENT-SPOKE-FIRST"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert await asyncio.wait_for(reader.readexactly(18), 10) == b"ORIGIN-SPOKE-FIRST"
        writer.write(b"|more")
        assert await asyncio.wait_for(received.get(), 10) == b"CLIENT-SPOKE-FIRST|more"
        echo = b"echo:CLIENT-SPOKE-FIRST|more"
        assert await asyncio.wait_for(reader.readexactly(len(echo)), 10) == echo
    assert not raw.errors


# -- error bodies ----------------------------------------------------------------------------


async def test_unknown_host() -> None:
    async with (
        Tunnel() as t,
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(f"{t.url}/", headers={"Host": "Missing.Example:8080"}) as response,
    ):
        assert response.status == 502
        assert await response.text() == 'no virtual host available for "missing.example:8080"\n'
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_host_match_is_case_insensitive_and_falls_back_to_bare_host() -> None:
    async with Tunnel() as t, aiohttp.ClientSession(timeout=TIMEOUT) as session:
        t.server.add_host("bare.test", t.identifier)
        for host in (t.host.upper(), "bare.test:9999", "BARE.test"):
            async with session.get(f"{t.url}/?echo=ok", headers={"Host": host}) as response:
                assert (response.status, await response.text()) == (200, "ok"), host


async def test_empty_host_raw() -> None:
    async with Tunnel() as t:
        answer = await raw_request(t.port, b"GET / HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 502 Bad Gateway\r\n")
    assert answer.endswith(b"\r\n\r\nrequest host is empty\n")


@needs_curl
async def test_curl_empty_host() -> None:
    async with Tunnel() as t:
        out = await run_curl("--http1.0", "-H", "Host:", "-w", "|%{http_code}", f"{t.url}/")
    assert out == b"request host is empty\n|502"


async def test_no_client_session() -> None:
    server = Server()
    listener = await server.serve("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.add_host("lonely.test", "nobody")
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(f"http://127.0.0.1:{port}/", headers={"Host": "lonely.test"}) as response,
        ):
            assert response.status == 502
            assert await response.text() == "no client session established\n"
        # a websocket upgrade is answered too (koding/tunnel left it hanging, hijacked)
        async with connect(port) as (reader, writer):
            writer.write(
                get(
                    "/ws",
                    "lonely.test",
                    "Connection: Upgrade",
                    "Upgrade: websocket",
                    "Sec-WebSocket-Version: 13",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                )
            )
            response = await read_response(reader)
        assert (response.status, response.body) == (502, b"no client session established\n")
    finally:
        await server.close(grace=1)


async def test_no_client_after_client_closed() -> None:
    async with Tunnel() as t, aiohttp.ClientSession(timeout=TIMEOUT) as session:
        assert await fetch(session, t, "before") == (200, "before")
        await t.client.close(grace=1)
        await asyncio.wait_for(t.client_task, 10)
        await wait_until(lambda: not t.server.is_connected(t.identifier))
        assert await fetch(session, t, "after", close=True) == (
            502,
            "no client session established\n",
        )


async def test_origin_down() -> None:
    async with (
        Tunnel(client_kwargs={"local_addr": f"127.0.0.1:{free_port()}"}) as t,
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(f"{t.url}/", headers={"Host": t.host}) as response,
    ):
        assert response.status == 503
        assert response.headers["Content-Length"] == "15"
        assert await response.text() == "no local server"


@pytest.mark.parametrize("target", [b"/_controlPath/", b"/_controlPath", b"/x/../_controlPath/"])
async def test_control_path_needs_connect(target: bytes) -> None:
    async with Tunnel() as t, connect(t.port) as (reader, writer):
        # any Host, even a routed one: the control path comes first
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: " + t.host.encode() + b"\r\n\r\n")
        response = await read_response(reader)
        assert (response.status, response.body) == (405, b"405 must CONNECT\n\n")
        writer.write(get("/?echo=still-alive", t.host))  # keep-alive goes on
        assert (await read_response(reader)).body == b"still-alive"


async def test_stream_timeout() -> None:
    """A client that completes the handshake but never opens the streams it is asked for."""
    server = Server(stream_timeout=0.3)
    listener = await server.serve("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.add_host("mute.test", "mute")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"CONNECT /_controlPath/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"X-Ktunnel-Identifier: mute\r\n\r\n"
        )
        assert await asyncio.wait_for(reader.readexactly(34), 5) == (
            b"HTTP/1.1 200 Connected to Tunnel\n\n"
        )
        writer.write(
            struct.pack(">BBHII", 0, 1, 1, 1, 0)
            + struct.pack(">BBHII", 0, 0, 0, 1, 16)
            + b"controlHandshake"
        )
        await wait_until(lambda: server.is_connected("mute"))
        started = time.monotonic()
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(f"http://127.0.0.1:{port}/", headers={"Host": "mute.test"}) as response,
        ):
            assert response.status == 502
            assert await response.text() == "timeout getting session\n"
        assert 0.25 < time.monotonic() - started < 5
        assert server.is_connected("mute")  # a slow client is not dropped for it
    finally:
        writer.close()
        await server.close(grace=1)


async def test_client_gone_mid_response() -> None:
    part = b"x" * 50_000
    sent = asyncio.Event()

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + part)
        await writer.drain()
        sent.set()
        await reader.read()  # hold the rest back until the tunnel drops us

    async with (
        RawOrigin(origin) as raw,
        Tunnel(client_kwargs={"local_addr": raw.addr}) as t,
        second_client(t, tagged_app("B")),
    ):
        async with connect(t.port) as (reader, writer):
            writer.write(get("/slow", t.host))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            first = await asyncio.wait_for(reader.readexactly(len(part)), 10)
            assert first == part
            await asyncio.wait_for(sent.wait(), 5)
            t.client._session.abort()  # the client vanishes mid-body
            rest = await asyncio.wait_for(reader.read(), 10)  # a clean EOF, no reset
            assert len(first) + len(rest) < 1_000_000
        # the server goes on serving the other client
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.get(f"{t.url}/?echo=other", headers={"Host": "other.test"}) as r,
        ):
            assert (r.status, await r.text(), r.headers["X-Origin"]) == (200, "other", "B")
        # and the vanished client comes back by itself
        await t.client.wait_connected(timeout=10)
        await t.wait_server_sees_client()
    assert not raw.errors


# -- TLS, reconnect, graceful close ----------------------------------------------------------


async def test_tls_on_both_legs() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "app.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    app = origin_app()

    async def proto(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("X-Forwarded-Proto", ""))

    app.router.add_get("/proto", proto)
    async with Tunnel(app=app, server_ssl=server_ctx, client_ssl=client_ctx) as t:
        assert t.url.startswith("https://")
        assert t.client._session.get_extra_info("ssl_object") is not None
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            async with session.get(
                f"{t.url}/?echo=secret", headers={"Host": t.host}, ssl=client_ctx
            ) as response:
                assert (response.status, await response.text()) == (200, "secret")
            async with session.get(
                f"{t.url}/proto", headers={"Host": t.host}, ssl=client_ctx
            ) as response:
                assert await response.text() == "https"


async def test_reconnect_client() -> None:
    async with Tunnel() as t, aiohttp.ClientSession(timeout=TIMEOUT) as session:
        assert await fetch(session, t, "first") == (200, "first")
        await t.client.close(grace=1)
        await asyncio.wait_for(t.client_task, 10)
        t.client_task = asyncio.ensure_future(t.client.start())
        await t.client.wait_connected(timeout=10)
        await t.wait_server_sees_client()
        assert await fetch(session, t, "second") == (200, "second")


async def test_client_close_does_not_wait_for_idle_keep_alive_connections() -> None:
    async with Tunnel() as t, aiohttp.ClientSession(timeout=TIMEOUT) as session:
        assert await fetch(session, t, "done") == (200, "done")  # answered; now idle
        began = time.monotonic()
        await t.client.close(grace=1)
        assert time.monotonic() - began < 0.5


async def test_server_graceful_close_lets_request_finish() -> None:
    app = origin_app()
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(0.5)
        return web.Response(text="finished")

    app.router.add_get("/slow", slow)
    async with Tunnel(app=app) as t, aiohttp.ClientSession(timeout=TIMEOUT) as session:

        async def request() -> tuple[int, str]:
            async with session.get(f"{t.url}/slow", headers={"Host": t.host}) as response:
                return response.status, await response.text()

        in_flight = asyncio.ensure_future(request())
        await asyncio.wait_for(started.wait(), 10)
        began = time.monotonic()
        await asyncio.wait_for(t.server.close(grace=5), 10)
        assert time.monotonic() - began < 4  # returned once the request was done
        assert in_flight.done() and in_flight.result() == (200, "finished")
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", t.port)  # no longer listening


# -- curl ------------------------------------------------------------------------------------


@needs_curl
async def test_curl_request() -> None:
    async with Tunnel() as t:
        out = await run_curl(
            "-H", f"Host: {t.host}", "-w", "|%{http_code}", f"{t.url}/?echo=from-curl"
        )
    assert out == b"from-curl|200"


@needs_curl
async def test_curl_chunked_upload_with_expect_continue() -> None:
    data = random.randbytes(3 * 1024 * 1024 + 17)
    async with Tunnel() as t:
        out = await run_curl(
            "-H",
            f"Host: {t.host}",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "@-",
            f"{t.url}/upload",
            stdin=data,
        )
    assert out == f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()


@needs_curl
async def test_curl_head_then_get_keep_alive() -> None:
    async with Tunnel() as t:
        out = await run_curl(
            "-H",
            f"Host: {t.host}",
            "-I",
            f"{t.url}/?echo=abc",
            "--next",
            "-H",
            f"Host: {t.host}",
            "-w",
            "|%{num_connects}",
            f"{t.url}/?echo=def",
        )
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 3\r\n" in out
    assert out.endswith(b"\r\n\r\ndef|0")  # the GET reused the HEAD's connection


async def test_idle_public_connections_are_closed() -> None:
    server = Server(idle_timeout=0.2)
    async with Tunnel(server=server) as t:
        reader, writer = await asyncio.open_connection("127.0.0.1", t.port)
        try:
            writer.write(f"GET /?echo=a HTTP/1.1\r\nHost: {t.host}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(reader.readexactly(1), 5)
            began = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            assert 0.15 <= time.monotonic() - began < 2
        finally:
            writer.close()
