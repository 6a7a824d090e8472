"""The access log (``ytun.tunnel.access``): one line per request, ytun's own answers
included, per upgrade (at the switch and at the end) and per TCP tunnel connection; lines
are written in batches, and a failing write never reaches the data path."""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import pytest
from test_front import read_all
from test_tunnel_http import connect, get, read_response
from tunnel_helpers import Tunnel

from ytun import Server
from ytun.tunnel import access
from ytun.tunnel.access import AccessLog, open_access_log

LINE = re.compile(
    r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?P<peer>\S+) (?P<host>\S+) "(?P<request>[^"]*)" '
    r"(?P<status>\d{3}|-) (?P<rest>.*)$"
)


class Collected:
    """An access-log sink: every write kept."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass

    @property
    def lines(self) -> list[re.Match[str]]:
        matches = []
        for line in "".join(self.writes).splitlines():
            match = LINE.match(line)
            assert match, line
            matches.append(match)
        return matches


def logged_server(**kwargs) -> tuple[Server, AccessLog, Collected]:
    sink = Collected()
    log = AccessLog(sink.write, sink.flush)
    return Server(access_log=log, **kwargs), log, sink


async def test_a_proxied_request_is_one_line_with_status_bytes_and_latency() -> None:
    server, log, sink = logged_server()
    async with Tunnel(server=server) as t:
        async with connect(t.port) as (reader, writer):
            writer.write(get("/?echo=hello", t.host, "Connection: close"))
            answer = await asyncio.wait_for(reader.read(), 10)
        log.flush()
        [line] = sink.lines
        assert line["peer"] == "127.0.0.1" and line["host"] == t.host
        assert (line["request"], line["status"]) == ("GET /?echo=hello", "200")
        sent, latency = line["rest"].split(" ")
        assert int(sent) == len(answer)  # every byte the public client got
        assert re.fullmatch(r"\d+\.\dms", latency)


async def test_the_servers_own_answers_are_logged() -> None:
    server, log, sink = logged_server()
    async with Tunnel(server=server) as t:
        unknown = await read_all(t.port, get("/x", "nowhere.test", "Connection: close"))
        bad = await read_all(t.port, get("/", t.host, "Host: second.test"))
        log.flush()
        lines = sink.lines
        assert [(m["host"], m["request"], m["status"]) for m in lines] == [
            ("nowhere.test", "GET /x", "502"),
            ("-", "- -", "400"),
        ]
        assert int(lines[0]["rest"].split()[0]) == len(unknown)
        assert int(lines[1]["rest"].split()[0]) == len(bad)


async def test_keep_alive_requests_are_one_line_each() -> None:
    server, log, sink = logged_server()
    async with Tunnel(server=server) as t, connect(t.port) as (reader, writer):
        writer.write(b"".join(get(f"/?echo={i}", t.host) for i in range(5)))
        for _ in range(5):
            await read_response(reader)
        log.flush()
        assert [m["request"] for m in sink.lines] == [f"GET /?echo={i}" for i in range(5)]


async def test_an_upgrade_is_logged_at_the_switch_and_at_its_end() -> None:
    server, log, sink = logged_server()
    async with Tunnel(server=server) as t:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{t.url}/ws", headers={"Host": t.host}) as ws,
        ):
            await ws.send_str("x" * 1000)
            assert (await ws.receive(timeout=10)).data == "x" * 1000
            log.flush()
            assert [(m["request"], m["status"]) for m in sink.lines] == [("GET /ws", "101")]

        async def ended() -> None:
            while len("".join(sink.writes).splitlines()) < 2:
                log.flush()
                await asyncio.sleep(0.02)

        await asyncio.wait_for(ended(), 10)
        end = sink.lines[1]
        assert (end["request"], end["status"]) == ("GET /ws", "101")
        match = re.fullmatch(r"end \d+\.\dms out=(\d+) in=(\d+)", end["rest"])
        assert match
        assert int(match[1]) > 1000 and int(match[2]) > 1000  # the message, each way


async def test_a_tcp_tunnel_connection_is_logged_when_it_ends() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(data * 2)
        await writer.drain()
        writer.close()

    local = await asyncio.start_server(echo, "127.0.0.1", 0)
    local_port = local.sockets[0].getsockname()[1]
    server, log, sink = logged_server()
    async with Tunnel(
        server=server, client_kwargs={"tcp_local": {0: f"127.0.0.1:{local_port}"}}
    ) as t:
        _, port = await server.add_addr("127.0.0.1:0", t.identifier)
        t.client.tcp_local[port] = f"127.0.0.1:{local_port}"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"12345")
        assert await asyncio.wait_for(reader.read(), 10) == b"1234512345"
        writer.close()

        async def logged() -> None:
            while not sink.writes:
                log.flush()
                await asyncio.sleep(0.02)

        await asyncio.wait_for(logged(), 10)
        [line] = sink.lines
        assert (line["peer"], line["host"], line["request"]) == ("127.0.0.1", f"tcp:{port}", "- -")
        assert re.fullmatch(r"end \d+\.\dms out=10 in=5", line["rest"])
    local.close()


async def test_lines_are_written_in_batches() -> None:
    sink = Collected()
    log = AccessLog(sink.write, sink.flush)
    for index in range(10):
        log.request("127.0.0.1", b"a.test", b"GET", b"/%d" % index, 200, 2, 0, 0.0)
    assert sink.writes == []  # held until the timer or the line limit

    async def written() -> None:
        while not sink.writes:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(written(), 5)
    assert len(sink.writes) == 1 and sink.writes[0].count("\n") == 10
    for _ in range(access.FLUSH_LINES):
        log.request("127.0.0.1", b"a.test", b"GET", b"/", 200, 2, 0, 0.0)
    assert len(sink.writes) == 2  # a full batch goes at once
    log.close()


def test_a_failing_write_is_reported_once_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(text: str) -> None:
        raise OSError(28, "No space left on device")

    log = AccessLog(broken, lambda: None)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            log.request("127.0.0.1", b"a.test", b"GET", b"/", 200, 2, 0, 0.0)  # no loop: at once
    assert [r.getMessage() for r in caplog.records if "access log" in r.getMessage()] == [
        "cannot write the access log, lines are dropped: [Errno 28] No space left on device"
    ]


def test_control_characters_and_quotes_are_escaped() -> None:
    sink = Collected()
    log = AccessLog(sink.write, sink.flush)
    log.request("::1", b'h"\x1b', b"GET", b'/a"b\\\r\nforged', 200, 0, 0, 0.0)
    [text] = sink.writes
    assert text.count("\n") == 1
    assert '"GET /a\\"b\\\\\\x0d\\x0aforged"' in text and 'h\\"\\x1b' in text


def test_settings_name_the_sink(tmp_path) -> None:
    assert open_access_log(None) is None and open_access_log("off") is None
    path = tmp_path / "access.log"
    log = open_access_log(path)
    assert log is not None
    log.request("127.0.0.1", b"a.test", b"GET", b"/file", 200, 2, 0, 0.0)
    log.close()
    assert '"GET /file" 200 2 ' in path.read_text()


async def test_no_access_log_by_default_in_the_library() -> None:
    server = Server()
    assert server.access_log is None


def test_a_shared_log_is_written_in_whole_lines_small_enough_to_stay_whole() -> None:
    """With --workers every worker writes to the same pipe or file: each write holds whole
    lines and stays within PIPE_BUF, so no worker's line is cut by another's."""
    writes: list[str] = []
    log = AccessLog(writes.append, lambda: None)
    log.shared = True
    for n in range(200):
        log.request("203.0.113.7", b"app.test", b"GET", b"/%d" % n, 200, 12, 0, 0.0)
    long_target = b"/" + b"x" * 3000
    log.request("203.0.113.7", b"app.test", b"GET", long_target, 200, 12, 0, 0.0)
    log.flush()
    assert len(writes) > 1
    assert all(piece.endswith("\n") for piece in writes)
    assert all(len(piece.encode()) <= 4096 for piece in writes[:-1])
    assert long_target.decode() in writes[-1]  # a line longer than a piece goes whole
    lines = "".join(writes).splitlines()
    assert len(lines) == 201
    assert [line.split('"')[1] for line in lines[:200]] == [f"GET /{n}" for n in range(200)]


async def test_a_request_line_is_formatted_when_written_with_the_times_of_its_answer(
    monkeypatch,
) -> None:
    """Lines are formatted lazily, at the batch's write: the latency and the time stamp
    are still those of the moment the answer was complete, and lines keep their order."""
    clock = {"monotonic": 100.0, "wall": 1_700_000_000.0}
    monkeypatch.setattr(access.time, "monotonic", lambda: clock["monotonic"])
    monkeypatch.setattr(access.time, "time", lambda: clock["wall"])
    sink = Collected()
    log = AccessLog(sink.write, sink.flush)
    log.request("192.0.2.1", b"a.example", b"GET", b"/x", 200, 12, 0, 99.9875)
    log.tcp_end("192.0.2.1", 2222, 5, 6, 99.0)
    clock["monotonic"] += 75.0  # the batch is written much later
    clock["wall"] += 75.0
    assert sink.writes == []
    log.flush()
    first, second = "".join(sink.writes).splitlines()
    assert first == '2023-11-14T22:13:20Z 192.0.2.1 a.example "GET /x" 200 12 12.5ms'
    assert second.startswith('2023-11-14T22:13:20Z 192.0.2.1 tcp:2222 "- -" - end 1000.0ms')
