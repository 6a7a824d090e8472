"""The public side end to end, byte-exact: raw sockets → ytun Server → ytun Client → an
origin that records what it received. Each test pins one framing or routing rule of the
public HTTP/1 connection (upgrade smuggling, Host rules, chunked framing, bare LF, header
timeout, one-byte writes, the keep-alive close race) and that no exception escapes a
protocol callback: the autouse ``no_loop_errors`` fixture fails a test on a loop error,
and ``no_tracebacks`` on an ERROR record with a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import pytest
from test_tunnel_http import RawOrigin, connect, get, read_response, second_client, tagged_app
from tunnel_helpers import Tunnel

from ytun import Server
from ytun.tunnel import split

pytestmark = pytest.mark.usefixtures("no_tracebacks", "http_scanner")


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


class Recorder:
    """An origin that answers every request ``200 ok`` with its number and keeps the
    request heads (and bodies, by Content-Length) it received, in order."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.received = b""

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                self.received += exc.partial
                return
            self.received += head
            body = b""
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    body = await reader.readexactly(int(line.split(b":", 1)[1]))
            self.received += body
            self.requests.append(head + body)
            text = b"ok%d" % len(self.requests)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
            await writer.drain()


@contextlib.asynccontextmanager
async def recorded_tunnel(head_timeout: float | None = None):
    recorder = Recorder()
    server = Server() if head_timeout is None else Server(head_timeout=head_timeout)
    async with (
        RawOrigin(recorder) as raw,
        Tunnel(server=server, client_kwargs={"local_addr": raw.addr}) as t,
    ):
        yield t, recorder
    assert not raw.errors


async def exchange(port: int, data: bytes, answers: int = 1) -> list:
    async with connect(port) as (reader, writer):
        writer.write(data)
        return [await read_response(reader) for _ in range(answers)]


async def read_all(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Everything the server sends back until it closes (a hang fails the test)."""
    async with connect(port) as (reader, writer):
        writer.write(data)
        return await asyncio.wait_for(reader.read(), timeout)


# -- issue 12 item 3: no smuggling behind an Upgrade request ---------------------------------

H2C = "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__"


async def test_request_after_a_refused_upgrade_is_routed_by_its_own_host() -> None:
    async with (
        recorded_tunnel() as (t, recorder),
        second_client(t, tagged_app("B")),
    ):
        smuggled = get("/?echo=routed", "other.test")
        answers = await exchange(t.port, get("/", t.host, *H2C) + smuggled, 2)
        assert [a.status for a in answers] == [200, 200]
        assert answers[0].body == b"ok1"
        assert answers[1].body == b"routed" and answers[1].headers["x-origin"] == "B"
        assert len(recorder.requests) == 1 and b"routed" not in recorder.received


async def test_request_after_a_refused_upgrade_gets_forwarding_headers() -> None:
    async with recorded_tunnel() as (t, recorder):
        second = b"POST /next HTTP/1.1\r\nHost: " + t.host.encode() + b"\r\n\r\n"
        answers = await exchange(t.port, get("/", t.host, *H2C) + second, 2)
        assert [a.body for a in answers] == [b"ok1", b"ok2"]
        assert recorder.requests[1].startswith(b"POST /next HTTP/1.1\r\n")
        assert b"X-Forwarded-For: 127.0.0.1\r\n" in recorder.requests[1]


async def test_unknown_host_after_a_refused_upgrade_is_answered_502() -> None:
    async with recorded_tunnel() as (t, recorder):
        smuggled = get("/", "nowhere.test")
        answers = await exchange(t.port, get("/", t.host, *H2C) + smuggled, 2)
        assert [a.status for a in answers] == [200, 502]
        assert answers[1].body == b'no virtual host available for "nowhere.test"\n'
        assert len(recorder.requests) == 1


async def test_half_close_before_the_101_reaches_the_origin_after_it() -> None:
    """Reading pauses until the answer, so the EOF is read, and passed on, after it."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.1)  # the client's EOF arrives before this answer
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"
        )
        await writer.drain()
        await got.put(await reader.read())  # everything, up to the EOF passed on
        writer.write(b"bye")
        await writer.drain()

    async with (
        RawOrigin(origin) as raw,
        Tunnel(client_kwargs={"local_addr": raw.addr}) as t,
        connect(t.port) as (reader, writer),
    ):
        writer.write(get("/", t.host, "Upgrade: x", "Connection: Upgrade") + b"raw bytes")
        writer.write_eof()
        assert await asyncio.wait_for(got.get(), 10) == b"raw bytes"
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 101 ") and answer.endswith(b"\r\n\r\nbye")
    assert not raw.errors


# -- issue 12 item 4: Host rules ---------------------------------------------------------------


async def test_several_host_headers_are_400() -> None:
    async with recorded_tunnel() as (t, recorder):
        answer = await read_all(t.port, get("/", t.host, "Host: other.test"))
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert answer.endswith(b"\r\n\r\nmultiple Host headers\n")
        assert recorder.requests == []


async def test_absolute_form_target_routes_by_its_authority() -> None:
    async with recorded_tunnel() as (t, recorder):
        target = f"http://{t.host}/abs?x=1"
        answers = await exchange(t.port, get(target, "elsewhere.test"))
        assert answers[0].status == 200
        head = recorder.requests[0]
        assert head.startswith(f"GET {target} HTTP/1.1\r\n".encode())
        assert f"\r\nHost: {t.host}\r\n".encode() in head
        assert b"elsewhere.test" not in head


async def test_absolute_form_control_path_is_still_the_control_path() -> None:
    async with recorded_tunnel() as (t, recorder):
        answers = await exchange(t.port, get(f"http://{t.host}/_controlPath/", t.host))
        assert (answers[0].status, answers[0].body) == (405, b"405 must CONNECT\n\n")
        assert recorder.requests == []


# -- issue 12 items 5 and 7: framing rules end to end ------------------------------------------


def chunked_post(host: str, body: bytes, version: str = "1.1") -> bytes:
    return (
        f"POST /up HTTP/{version}\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + body
    )


@pytest.mark.parametrize(
    "body",
    [b"-1\r\n", b"zz\r\n", b"0x5\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n"],
    ids=["negative", "not-hex", "0x-prefix", "no-crlf-after-data"],
)
async def test_bad_chunked_request_is_400_and_closed(body: bytes) -> None:
    async with recorded_tunnel() as (t, _recorder):
        answer = await read_all(t.port, chunked_post(t.host, body))
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"Connection: close\r\n" in answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST / HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\nHost: {host}\n\n",
        b"GET / HTTP/1.1\r\nHost: {host}\n\r\n",
    ],
    ids=["te-in-http10", "cl-and-te", "te-not-chunked", "bare-lf", "one-bare-lf"],
)
async def test_framing_errors_are_400_never_forwarded(request_bytes: bytes) -> None:
    async with recorded_tunnel() as (t, recorder):
        answer = await read_all(t.port, request_bytes.replace(b"{host}", t.host.encode()))
        assert b" 400 Bad Request\r\n" in answer.split(b"\r\n", 1)[0] + b"\r\n"
        assert recorder.requests == [] and recorder.received == b""


async def test_empty_lines_before_a_request_are_skipped() -> None:
    async with recorded_tunnel() as (t, recorder):
        first = get("/a", t.host)
        answers = await exchange(t.port, b"\r\n\r\n" + first + b"\r\n" + get("/b", t.host), 2)
        assert [a.body for a in answers] == [b"ok1", b"ok2"]
        assert recorder.received.startswith(b"GET /a HTTP/1.1\r\n")
        assert b"\r\n\r\n\r\n" not in recorder.received


async def test_chunked_request_with_extensions_and_trailers_goes_through() -> None:
    async with recorded_tunnel() as (t, recorder):
        body = b"5;name=v\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
        answers = await exchange(t.port, chunked_post(t.host, body) + get("/after", t.host), 2)
        assert [a.status for a in answers] == [200, 200]
        assert recorder.received.count(body) == 1


async def test_malformed_response_head_is_502() -> None:
    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 2x0 Nope\r\nContent-Length: 0\r\n\r\n")
        await reader.read()

    async with RawOrigin(origin) as raw, Tunnel(client_kwargs={"local_addr": raw.addr}) as t:
        answer = await read_all(t.port, get("/", t.host))
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert answer.endswith(b"\r\n\r\nread from tunnel: malformed response from the tunnel\n")


async def test_malformed_chunked_response_is_cut_cleanly() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + b"3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"zz\r\nboom")
        await reader.read()

    async with RawOrigin(origin) as raw, Tunnel(client_kwargs={"local_addr": raw.addr}) as t:
        answer = await read_all(t.port, get("/", t.host) + get("/second", t.host))
    assert answer == head + b"3\r\nabc\r\n"  # what was valid, then a clean close


async def test_one_log_line_for_a_malformed_response(caplog: pytest.LogCaptureFixture) -> None:
    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n")
        await reader.read()

    async with RawOrigin(origin) as raw, Tunnel(client_kwargs={"local_addr": raw.addr}) as t:
        caplog.clear()
        await read_all(t.port, get("/", t.host))
    lines = [r for r in caplog.records if r.name == "ytun.server" and "chunk" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING


# -- issue 12 item 9: one-byte writes stay linear --------------------------------------------


async def test_head_sent_one_byte_per_write_is_scanned_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scanned: list[int] = []
    real = split.scan_head

    def spy(buffer: bytes, start: int, collected: bytes | bytearray) -> int:
        scanned.append(len(buffer) - start)
        return real(buffer, start, collected)

    monkeypatch.setattr(split, "scan_head", spy)
    async with recorded_tunnel() as (t, recorder):
        request = get("/slow", t.host, "X-Pad: " + "p" * 2000)
        scanned.clear()  # the client's CONNECT went through the same splitter
        async with connect(t.port) as (reader, writer):
            for index in range(len(request)):
                writer.write(request[index : index + 1])
                await writer.drain()
                if index % 64 == 0:
                    await asyncio.sleep(0)  # let the server read small segments
            answer = await read_response(reader)
        assert answer.status == 200 and len(recorder.requests) == 1
    # Each byte once, not once per write. (An answer that arrives whole is checked in one
    # step, without scan_head; one that arrives in pieces goes through it once.)
    answer_size = len(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok1")
    assert len(request) <= sum(scanned) <= len(request) + answer_size


# -- issue 12 item 10: the keep-alive close race ---------------------------------------------


def answer_once_then_close(answered: list[int], *, at_once: bool = False):
    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        answered.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        await writer.drain()
        if not at_once:
            # Keep-alive promised, then closed just as the next request arrives: the race
            # a proxy must absorb, made certain by waiting for that request's first bytes.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), 5)
        writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(), 5)  # read what is left: no reset

    return origin


@pytest.mark.parametrize("at_once", [False, True], ids=["as-next-arrives", "at-once"])
async def test_keep_alive_origin_that_closes_back_to_back(at_once: bool) -> None:
    answered: list[int] = []
    async with (
        RawOrigin(answer_once_then_close(answered, at_once=at_once)) as raw,
        Tunnel(client_kwargs={"local_addr": raw.addr}) as t,
        connect(t.port) as (reader, writer),
    ):
        statuses = []
        for index in range(50):
            writer.write(get(f"/{index}", t.host))
            statuses.append((await read_response(reader)).status)
        assert statuses == [200] * 50
    assert len(answered) == 50 and not raw.errors


async def test_keep_alive_origin_that_closes_pipelined() -> None:
    answered: list[int] = []
    async with (
        RawOrigin(answer_once_then_close(answered)) as raw,
        Tunnel(client_kwargs={"local_addr": raw.addr}) as t,
        connect(t.port) as (reader, writer),
    ):
        writer.write(b"".join(get(f"/{index}", t.host) for index in range(50)))
        statuses = [(await read_response(reader)).status for _ in range(50)]
        assert statuses == [200] * 50
    assert len(answered) == 50 and not raw.errors


async def test_a_post_is_not_resent() -> None:
    answered: list[int] = []
    async with (
        RawOrigin(answer_once_then_close(answered)) as raw,
        Tunnel(client_kwargs={"local_addr": raw.addr}) as t,
        connect(t.port) as (reader, writer),
    ):
        post = f"POST /p HTTP/1.1\r\nHost: {t.host}\r\nContent-Length: 1\r\n\r\nx".encode()
        writer.write(get("/", t.host) + post)
        first = await read_response(reader)
        second = await read_response(reader)
        assert (first.status, second.status) == (200, 502)
        assert second.body == b"read from tunnel: unexpected EOF\n"
    assert len(answered) == 1


# -- issue 12 item 8: a head must arrive within head_timeout -------------------------------


async def test_slow_head_is_answered_408_and_closed() -> None:
    async with recorded_tunnel(head_timeout=0.3) as (t, recorder):
        async with connect(t.port) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: ")
            answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert recorder.received == b""


async def test_many_silent_connections_are_closed() -> None:
    async with recorded_tunnel(head_timeout=0.3) as (t, _recorder):
        connections = [await asyncio.open_connection("127.0.0.1", t.port) for _ in range(20)]
        try:
            for _, writer in connections:
                writer.write(b"G")
            ends = await asyncio.wait_for(
                asyncio.gather(*(reader.read() for reader, _ in connections)), 10
            )
            assert all(end.startswith(b"HTTP/1.1 408 ") for end in ends)
        finally:
            for _, writer in connections:
                writer.close()


async def test_slow_head_after_a_request_is_answered_408() -> None:
    async with recorded_tunnel(head_timeout=0.3) as (t, recorder):
        async with connect(t.port) as (reader, writer):
            writer.write(get("/", t.host))
            assert (await read_response(reader)).status == 200
            writer.write(b"GET /next HT")
            rest = await asyncio.wait_for(reader.read(), 10)
        assert rest.startswith(b"HTTP/1.1 408 ")
        assert len(recorder.requests) == 1


async def test_slow_connect_head_is_closed() -> None:
    async with recorded_tunnel(head_timeout=0.3) as (t, _recorder):
        answer = await read_all(t.port, b"CONNECT /_controlPath/ HTTP/1.1\r\nHost: x\r\n", 10)
        assert answer.startswith(b"HTTP/1.1 408 ")
