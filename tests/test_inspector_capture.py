"""The inspector's capture, sans-I/O: copies of a stream's bytes in, exchanges out.

Each test feeds the bytes in pieces of every size the parametrization gives (one byte at a
time included), as they may arrive from the tunnel; async tests run on both loops."""

from __future__ import annotations

import asyncio

import pytest

from ytun.errors import ReplayError
from ytun.inspector import ExchangeLog
from ytun.inspector.capture import MAX_UNANSWERED, StreamCapture
from ytun.inspector.exchange import MASK, dechunk, detail, summary
from ytun.inspector.log import FEED_BACKLOG
from ytun.inspector.replay import check_replayable

PIECES = [1, 7, 100_000]


def feed(capture: StreamCapture, side: str, data: bytes, piece: int) -> None:
    method = capture.request_data if side == "request" else capture.response_data
    for start in range(0, len(data), piece):
        method(data[start : start + piece])


def capture_of(log: ExchangeLog) -> StreamCapture:
    capture = StreamCapture(log)
    capture.local_connected(("127.0.0.1", 9))
    return capture


@pytest.mark.parametrize("piece", PIECES)
async def test_keep_alive_records_each_request_and_answer(piece: int) -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    requests = (
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /two?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        b"HEAD /three HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    responses = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
        b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\ntwo"
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"  # HEAD: no body follows
    )
    feed(capture, "request", requests, piece)
    assert [e.state for e in log.newest_first()] == ["pending"] * 3
    feed(capture, "response", responses, piece)
    one, two, three = reversed(log.newest_first())
    assert (one.method, one.target, one.status, one.state) == ("GET", "/one", 200, "complete")
    assert (two.method, two.target, two.status) == ("POST", "/two?x=1", 201)
    assert bytes(two.request.body) == b"hello" and two.request.size == 5
    assert bytes(two.response.body) == b"two" and two.reason == "Created"
    assert (three.method, three.status, three.response.size) == ("HEAD", 200, 0)
    assert all(e.duration is not None and e.duration >= 0 for e in (one, two, three))
    assert all(e.local_address == ("127.0.0.1", 9) for e in (one, two, three))
    assert not capture.waiting and not capture.stopped


@pytest.mark.parametrize("piece", PIECES)
async def test_chunked_bodies_are_counted_on_the_wire_and_shown_decoded(piece: int) -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    request = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    feed(capture, "request", request + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n", piece)
    feed(capture, "response", response, piece)
    upload, after = reversed(log.newest_first())
    view = detail(upload)
    assert view["request"]["body"]["text"] == "hello world"
    assert view["request"]["body"]["chunked"] is True
    assert upload.request.size == len(request) - request.index(b"\r\n\r\n") - 4
    assert view["response"]["body"]["text"] == "abc"
    assert upload.request.complete and upload.state == "complete"
    assert (after.target, after.status, after.state) == ("/next", 204, "complete")
    check_replayable(upload)  # whole: it can be sent again


def test_a_body_cut_inside_a_character_is_still_text() -> None:
    log = ExchangeLog(body_limit=2)
    capture = capture_of(log)
    body = "héllo wörld".encode()
    capture.request_data(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    (exchange,) = log.newest_first()
    assert detail(exchange)["request"]["body"]["text"] == "h"


def test_dechunk_reads_as_much_of_a_cut_body_as_there_is() -> None:
    assert dechunk(b"5\r\nhello\r\n3\r\nab") == b"helloab"
    assert dechunk(b"5\r\nhel") == b"hel"
    assert dechunk(b"zz\r\nhello") == b""


@pytest.mark.parametrize("piece", PIECES)
async def test_an_upgrade_is_recorded_with_its_101_and_the_stream_is_left_alone(
    piece: int,
) -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    feed(
        capture,
        "request",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x05hello",  # a frame the client sent early
        piece,
    )
    feed(
        capture,
        "response",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x05hello GET / HTTP/1.1\r\n\r\n",
        piece,
    )
    feed(capture, "request", b"\x81\x02hi not http at all\r\n\r\n", piece)
    (exchange,) = log.newest_first()
    assert (exchange.status, exchange.state, exchange.upgrade) == (101, "upgraded", True)
    assert capture.stopped and len(log) == 1
    with pytest.raises(ReplayError, match="switches protocols"):
        check_replayable(exchange)


async def test_an_upgrade_refused_is_recorded_and_ends_the_capture() -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    capture.request_data(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
    )
    capture.response_data(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno")
    (exchange,) = log.newest_first()
    assert (exchange.status, exchange.state) == (400, "complete")
    assert capture.stopped


async def test_interim_answers_are_skipped() -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    capture.request_data(
        b"PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"
    )
    capture.response_data(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    (exchange,) = log.newest_first()
    assert (exchange.status, exchange.state) == (200, "complete")


async def test_a_body_to_the_end_of_the_stream_completes_at_eof() -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    capture.request_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    capture.response_data(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    (exchange,) = log.newest_first()
    assert exchange.state == "pending"
    capture.response_eof()
    assert exchange.state == "complete" and bytes(exchange.response.body) == b"until close"


@pytest.mark.parametrize("piece", PIECES)
async def test_bodies_are_cut_at_the_limit_and_counted_whole(piece: int) -> None:
    log = ExchangeLog(body_limit=10)
    capture = capture_of(log)
    body = bytes(range(255, -1, -1)) * 4
    feed(
        capture,
        "request",
        b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\n\r\n" + body,
        piece,
    )
    feed(capture, "response", b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + body, piece)
    (exchange,) = log.newest_first()
    for message in (exchange.request, exchange.response):
        assert bytes(message.body) == body[:10]
        assert message.size == 1024 and message.truncated
    view = detail(exchange)["request"]["body"]
    assert (view["size"], view["captured"], view["truncated"]) == (1024, 10, True)
    assert view["text"] is None  # not UTF-8: shown as base64
    with pytest.raises(ReplayError, match="larger than the capture limit"):
        check_replayable(exchange)


async def test_secret_header_values_are_masked_in_every_view_but_kept_for_replay() -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    capture.request_data(
        b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cr3t-token\r\n"
        b"proxy-authorization: Basic cHJveHk=\r\nCookie: session=s3cr3t-cookie\r\n"
        b"X-Other: visible\r\n\r\n"
    )
    capture.response_data(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: session=s3cr3t-new\r\nContent-Length: 0\r\n\r\n"
    )
    (exchange,) = log.newest_first()
    view = detail(exchange)
    request_headers = dict((name.lower(), value) for name, value in view["request"]["headers"])
    assert request_headers["authorization"] == MASK
    assert request_headers["proxy-authorization"] == MASK
    assert request_headers["cookie"] == MASK
    assert request_headers["x-other"] == "visible"
    assert dict(view["response"]["headers"])["Set-Cookie"] == MASK
    assert "s3cr3t" not in repr(view) and "s3cr3t" not in repr(summary(exchange))
    assert b"Bearer s3cr3t-token" in exchange.request.head  # what a replay sends


async def test_the_log_keeps_only_the_last_n() -> None:
    log = ExchangeLog(max_entries=3)
    capture = capture_of(log)
    for index in range(10):
        capture.request_data(f"GET /{index} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        capture.response_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [e.target for e in log.newest_first()] == ["/9", "/8", "/7"]
    assert [e.id for e in log.newest_first()] == [10, 9, 8]
    assert log.get(1) is None and log.get(10) is not None


@pytest.mark.parametrize(
    "garbage",
    [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/1.1\nHost: a\n\n"],
    ids=["tls", "bare-lf"],
)
async def test_garbage_requests_stop_the_capture_without_raising(garbage: bytes) -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    capture.request_data(garbage + b"\r\n\r\n")
    capture.request_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    capture.response_data(b"anything")
    assert capture.stopped and len(log) == 0


async def test_a_garbage_answer_leaves_the_request_incomplete_with_the_reason() -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    capture.request_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    capture.response_data(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    (exchange,) = log.newest_first()
    assert exchange.state == "incomplete" and "not an HTTP answer" in exchange.error
    assert capture.stopped


async def test_a_stream_that_ends_early_leaves_its_requests_incomplete() -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    capture.request_data(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    capture.response_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    capture.closed()
    b, a = log.newest_first()
    assert a.state == b.state == "incomplete"
    assert a.error == "the stream ended before the answer did"
    assert bytes(a.response.body) == b"ab"


async def test_a_stream_whose_local_service_was_never_reached_says_so() -> None:
    log = ExchangeLog()
    capture = StreamCapture(log)  # no local_connected: the dial failed
    capture.request_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    capture.closed()
    (exchange,) = log.newest_first()
    assert (exchange.state, exchange.error) == ("incomplete", "no local service was reached")
    with pytest.raises(ReplayError, match="never reached a local service"):
        check_replayable(exchange)


async def test_unanswered_requests_are_bounded() -> None:
    log = ExchangeLog()
    capture = capture_of(log)
    capture.request_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * (MAX_UNANSWERED + 5))
    assert capture.stopped and len(log) == MAX_UNANSWERED
    assert all(
        e.error == "too many requests sent ahead of their answers" for e in log.newest_first()
    )


async def test_the_live_feed_sends_each_change_and_drops_a_subscriber_that_lags() -> None:
    log = ExchangeLog()
    feed_iter = log.feed()
    hello = await asyncio.wait_for(feed_iter.__anext__(), 5)
    assert '"hello"' in hello
    capture = capture_of(log)
    capture.request_data(b"GET /live HTTP/1.1\r\nHost: a\r\nCookie: c=secret\r\n\r\n")
    added = await asyncio.wait_for(feed_iter.__anext__(), 5)
    assert '"added"' in added and "/live" in added and "secret" not in added
    capture.response_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    changed = await asyncio.wait_for(feed_iter.__anext__(), 5)
    assert '"changed"' in changed and '"status":200' in changed.replace(" ", "")
    for _ in range(FEED_BACKLOG + 1):  # nobody reads: the subscriber is dropped
        capture.request_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        capture.response_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    received = [event async for event in feed_iter]
    assert len(received) == FEED_BACKLOG
    assert not log._subscribers


async def test_closing_the_log_ends_every_feed() -> None:
    log = ExchangeLog()
    feed_iter = log.feed()
    await feed_iter.__anext__()
    pending = asyncio.ensure_future(feed_iter.__anext__())
    await asyncio.sleep(0)
    log.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 5)
