"""HopAuth on its own: a signed line is taken once, a stale or forged one never, and the
memory of taken lines is bounded in time and in size."""

from __future__ import annotations

import logging

import pytest

from ytun.cluster import hop
from ytun.cluster.hop import HopAuth

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
