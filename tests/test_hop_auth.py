"""HopAuth on its own: a signed line is taken once, a stale or forged one never, and the
memory of taken lines is bounded in time and in size. And the hop listener's bound on
connections still waiting for their first line."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ytun.cluster import hop
from ytun.cluster.hop import HopAuth, HopListener

KEY = "ab" * 32


def fresh_line(auth: HopAuth, peer: str = "10.0.0.1") -> bytes:
    return auth.line("http", KEY, 0, peer, b"https").rstrip(b"\r\n")


def test_a_line_is_taken_once() -> None:
    auth = HopAuth(b"k" * 32)
    line = fresh_line(auth)
    request = auth.check(line)
    assert request is not None and (request.key, request.peer, request.scheme) == (
        KEY,
        "10.0.0.1",
        b"https",
    )
    assert auth.check(line) is None
    assert auth.check(fresh_line(auth)) is not None  # another line, another nonce


def test_stale_and_forged_lines_are_refused_and_not_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = HopAuth(b"k" * 32)
    assert auth.check(fresh_line(HopAuth(b"x" * 32))) is None
    now = hop.time.time()
    monkeypatch.setattr(hop.time, "time", lambda: now - hop.MAX_SKEW - 5)
    stale = fresh_line(auth)
    monkeypatch.setattr(hop.time, "time", lambda: now)
    assert auth.check(stale) is None
    assert auth.remembered == 0


def test_taken_lines_are_forgotten_once_they_could_no_longer_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = HopAuth(b"k" * 32)
    for _ in range(3):
        assert auth.check(fresh_line(auth)) is not None
    assert auth.remembered == 3
    later = hop.time.monotonic() + hop.REMEMBER_FOR + 1
    monkeypatch.setattr(hop.time, "monotonic", lambda: later)
    assert auth.check(fresh_line(auth)) is not None
    assert auth.remembered == 1


def test_past_its_bound_the_memory_forgets_the_oldest_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hop, "MAX_REMEMBERED", 3)
    auth = HopAuth(b"k" * 32)
    lines = [fresh_line(auth) for _ in range(5)]
    with caplog.at_level(logging.WARNING, logger="ytun.cluster"):
        assert all(auth.check(line) is not None for line in lines)
    assert auth.remembered == 3
    assert [r.getMessage() for r in caplog.records].count(
        "more than 3 cluster hops in 120 s: the oldest are forgotten early, so their lines "
        "could be replayed until their time runs out"
    ) == 1
    assert auth.check(lines[-1]) is None  # still remembered
    assert auth.check(lines[0]) is not None  # forgotten early: the documented cost


async def test_connections_waiting_for_their_first_line_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hop, "MAX_WAITING", 2)
    hops = HopListener(HopAuth(b"k" * 32), lambda *args, **kwargs: None)
    server = await asyncio.get_running_loop().create_server(hops.protocol_factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        waiting = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
        writer.close()
        assert (hops.waiting, hops.refused) == (2, 1)
        for _, held in waiting:
            held.close()
        deadline = asyncio.get_running_loop().time() + 5
        while hops.waiting and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert hops.waiting == 0  # gone before their line: room again
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"not a hop line\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert (hops.waiting, hops.refused) == (0, 2)
    finally:
        server.close()
