"""The sans-I/O HTTP/1 splitters: unit tests of both directions, and properties.

Properties: any split of the input gives the same messages as one feed; arbitrary bytes
only ever raise ``HttpError``; and where llhttp (httptools) and the request splitter both
accept a byte stream, they find the same message boundaries. Every test runs on both
HTTP-scanning implementations (``http_scanner``). The ``ytun-split`` hypothesis
profile keeps CI runs small and reproducible; ``YTUN_FUZZ_EXAMPLES=5000`` digs deeper.
"""

from __future__ import annotations

import os

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ytun.tunnel import split
from ytun.tunnel.http1 import MAX_HEAD_SIZE, HttpError, RequestHead, parse_request_head
from ytun.tunnel.split import (
    END,
    NEED_DATA,
    PAUSED,
    TRANSITIONS,
    Body,
    Head,
    Raw,
    RequestSplitter,
    ResponseSplitter,
    State,
)

settings.register_profile(
    "ytun-split",
    max_examples=int(os.environ.get("YTUN_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    # http_scanner only swaps two pure functions: nothing to reset between examples
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
PROFILE = settings.get_profile("ytun-split")

# Every test here runs on the compiled scanning module and on its pure-Python twin.
pytestmark = pytest.mark.usefixtures("http_scanner")


# -- helpers ----------------------------------------------------------------------------------


def pull(splitter, data: bytes = b"") -> list:
    """Every event up to NEED_DATA or PAUSED (the stop signal is included)."""
    if data:
        splitter.receive(data)
    events = []
    while True:
        event = splitter.next_event()
        events.append(event)
        if event is NEED_DATA or event is PAUSED:
            return events


def messages(events: list) -> list:
    """Events as comparable values: adjacent Body (or Raw) spans merged, signals dropped."""
    out: list = []
    for event in events:
        if isinstance(event, Head):
            out.append(("head", event.raw))
        elif isinstance(event, (Body, Raw)):
            kind = "body" if isinstance(event, Body) else "raw"
            if out and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1] + event.payload())
            else:
                out.append((kind, event.payload()))
        elif event is END:
            out.append(("end",))
    return out


def feed_all(splitter, pieces: list[bytes]) -> list:
    events: list = []
    for piece in pieces:
        events += pull(splitter, piece)
    return events


def request_head(raw: bytes) -> RequestHead:
    return parse_request_head(raw)


GET = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"


# -- requests ---------------------------------------------------------------------------------


def test_one_get_is_a_head_then_end() -> None:
    events = pull(RequestSplitter(), GET)
    assert messages(events) == [("head", GET), ("end",)]
    assert events[0].head.host == b"a.test" and events[-1] is NEED_DATA


def test_a_head_spanning_the_whole_buffer_is_not_copied() -> None:
    data = GET[:]
    events = pull(RequestSplitter(), data)
    assert events[0].raw is data


def test_body_events_are_spans_of_the_received_buffer() -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET"
    events = pull(RequestSplitter(), data)
    body = events[1]
    assert isinstance(body, Body) and body.buffer is data
    assert (body.start, body.stop, body.payload()) == (len(data) - 8, len(data) - 3, b"hello")
    whole = b"world"
    splitter = RequestSplitter()
    pull(splitter, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    assert pull(splitter, whole)[0].payload() is whole  # zero-copy when it is all body


def test_pipelined_requests_with_bodies() -> None:
    chunked = (
        b"POST /c HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"
    )
    length = b"PUT /l HTTP/1.1\r\nHost: c\r\nContent-Length: 3\r\n\r\nabc"
    events = pull(RequestSplitter(), GET + chunked + length + GET)
    head_end = chunked.index(b"\r\n\r\n") + 4
    assert messages(events) == [
        ("head", GET),
        ("end",),
        ("head", chunked[:head_end]),
        ("body", chunked[head_end:]),
        ("end",),
        ("head", length[:-3]),
        ("body", b"abc"),
        ("end",),
        ("head", GET),
        ("end",),
    ]


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n\r\n"])
def test_empty_lines_before_a_request_are_skipped_never_forwarded(prefix: bytes) -> None:
    assert messages(pull(RequestSplitter(), prefix + GET)) == [("head", GET), ("end",)]
    one_by_one = feed_all(RequestSplitter(), [bytes([b]) for b in prefix + GET])
    assert messages(one_by_one) == [("head", GET), ("end",)]


def test_empty_lines_alone_produce_nothing() -> None:
    splitter = RequestSplitter()
    assert pull(splitter, b"\r\n\r\n") == [NEED_DATA]
    assert not splitter.head_pending


def test_head_scanning_is_linear_in_one_byte_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    scanned = []
    real = split.scan_head

    def spy(buffer: bytes, start: int, collected: bytes | bytearray) -> int:
        scanned.append(len(buffer) - start)
        return real(buffer, start, collected)

    monkeypatch.setattr(split, "scan_head", spy)
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 4000 + b"\r\n\r\n"
    events = feed_all(RequestSplitter(), [bytes([b]) for b in head])
    assert messages(events) == [("head", head), ("end",)]
    assert sum(scanned) == len(head)  # every byte looked at once, not once per write

    scanned.clear()
    response = b"HTTP/1.1 204 No Content\r\nX-Pad: " + b"p" * 4000 + b"\r\n\r\n"
    splitter = ResponseSplitter()
    splitter.expect(request_head(GET))
    events = feed_all(splitter, [bytes([b]) for b in response])
    assert messages(events) == [("head", response), ("end",)]
    assert sum(scanned) == len(response)


def test_head_larger_than_the_limit_is_431_without_waiting_for_its_end() -> None:
    splitter = RequestSplitter()
    pull(splitter, b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_SIZE - 100))
    with pytest.raises(HttpError) as error:
        pull(splitter, b"a" * 200)
    assert error.value.status == 431


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\n",  # fails before the head is complete
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        b"\r\rGET / HTTP/1.1\r\n\r\n",
        b"\nGET / HTTP/1.1\r\n\r\n",
    ],
)
def test_bare_lf_or_cr_in_a_request_head_is_400(data: bytes) -> None:
    for pieces in ([data], [bytes([b]) for b in data]):
        with pytest.raises(HttpError) as error:
            feed_all(RequestSplitter(), pieces)
        assert error.value.status == 400


def chunked_post(body: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body


@pytest.mark.parametrize(
    "body",
    [
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"_5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"-1\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"zz\r\n",
        b"zz",  # fails before the line ends
        b";ext\r\n",
        b"\r\n",
        b"1" * 17 + b"\r\n",
        b"5\r\nhelloX",  # no CRLF after the data: fails at once
        b"5\r\nhello\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nTrailer: x\n\r\n",
    ],
)
def test_malformed_chunked_framing_is_400(body: bytes) -> None:
    for pieces in ([chunked_post(body)], [chunked_post(b""), *(bytes([b]) for b in body)]):
        with pytest.raises(HttpError) as error:
            feed_all(RequestSplitter(), pieces)
        assert error.value.status == 400


def test_chunk_extensions_and_trailers_are_accepted() -> None:
    body = b'A;a=1;b="q"\r\n0123456789\r\n00000\r\nX-Trailer: 1\r\n\r\n'
    events = pull(RequestSplitter(), chunked_post(body) + GET)
    assert messages(events)[1:] == [("body", body), ("end",), ("head", GET), ("end",)]


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "multiple Host headers"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", "multiple Host headers"),
        (
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 request",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            None,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\n",
            None,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", None),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\n", None),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: a\r\n Folded: b\r\n\r\n", None),
    ],
)
def test_request_framing_errors_are_400(head: bytes, message: str | None) -> None:
    with pytest.raises(HttpError) as error:
        pull(RequestSplitter(), head)
    assert error.value.status == 400
    if message is not None:
        assert str(error.value) == message


def test_identical_content_lengths_collapse_into_one() -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab"
    events = pull(RequestSplitter(), data)
    assert messages(events) == [
        ("head", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"),
        ("body", b"ab"),
        ("end",),
    ]


def test_an_error_is_raised_again_and_nothing_follows() -> None:
    splitter = RequestSplitter()
    with pytest.raises(HttpError):
        pull(splitter, b"GET / HTTP/1.1\nHost: a\n\n")
    assert splitter.state is State.ERROR
    with pytest.raises(HttpError):
        pull(splitter, GET)


@pytest.mark.parametrize(
    ("target", "authority"),
    [
        (b"http://other.test/x?y", b"other.test"),
        (b"HTTPS://user:pw@other.test:8443", b"other.test:8443"),
        (b"http://other.test?q", b"other.test"),
    ],
)
def test_absolute_form_routes_by_its_authority_and_rewrites_host(
    target: bytes, authority: bytes
) -> None:
    data = b"GET " + target + b" HTTP/1.1\r\nX-A: 1\r\nHost: a.test\r\nX-B: 2\r\n\r\n"
    head = pull(RequestSplitter(), data)[0]
    assert head.head.host == authority
    assert head.raw == (
        b"GET " + target + b" HTTP/1.1\r\nHost: " + authority + b"\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
    )
    assert parse_request_head(head.raw).host == authority


def test_origin_form_keeps_its_head_untouched() -> None:
    data = b"GET /http://x HTTP/1.1\r\nHost: a.test\r\n\r\n"
    assert pull(RequestSplitter(), data)[0].raw is data


def test_connection_close_makes_it_the_last_request() -> None:
    splitter = RequestSplitter()
    close = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    assert messages(pull(splitter, close + GET)) == [("head", close), ("end",)]
    assert splitter.state is State.CLOSED
    assert pull(splitter, GET) == [NEED_DATA]


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
SMUGGLED = b"POST /admin HTTP/1.1\r\nHost: other\r\nContent-Length: 0\r\n\r\n"


def test_bytes_after_an_upgrade_request_wait_for_its_answer() -> None:
    splitter = RequestSplitter()
    events = pull(splitter, UPGRADE + SMUGGLED)
    assert messages(events) == [("head", UPGRADE), ("end",)] and events[-1] is PAUSED
    assert pull(splitter) == [PAUSED]
    splitter.receive(b"more")  # arriving while paused: kept after the held bytes
    splitter.upgrade_accepted()
    assert messages(pull(splitter)) == [("raw", SMUGGLED + b"more")]
    assert messages(pull(splitter, b"frame")) == [("raw", b"frame")]


def test_a_refused_upgrade_reads_the_next_request_as_http() -> None:
    splitter = RequestSplitter()
    pull(splitter, UPGRADE + SMUGGLED)
    splitter.upgrade_refused()
    events = pull(splitter)
    assert messages(events) == [("head", SMUGGLED), ("end",)]
    assert events[0].head.host == b"other"


def test_connect_pauses_like_an_upgrade() -> None:
    splitter = RequestSplitter()
    connect = b"CONNECT /_controlPath/ HTTP/1.1\r\nHost: s\r\n\r\n"
    events = pull(splitter, connect + b"\x00\x01yamux")
    assert messages(events) == [("head", connect), ("end",)] and events[-1] is PAUSED
    splitter.upgrade_accepted()
    assert messages(pull(splitter)) == [("raw", b"\x00\x01yamux")]


def test_every_state_has_its_transitions_and_illegal_ones_are_refused() -> None:
    assert set(TRANSITIONS) == set(State)
    for state, targets in TRANSITIONS.items():
        assert State.ERROR in targets or not targets, state  # any live state can fail
    splitter = RequestSplitter()
    with pytest.raises(RuntimeError):
        splitter.upgrade_accepted()  # only an upgrade request waits for that
    pull(splitter, UPGRADE)
    splitter.upgrade_refused()
    with pytest.raises(RuntimeError):
        splitter.upgrade_refused()


# -- responses --------------------------------------------------------------------------------


def response_splitter(*requests: bytes) -> ResponseSplitter:
    splitter = ResponseSplitter()
    for raw in requests:
        splitter.expect(request_head(raw))
    return splitter


HEAD_REQUEST = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def test_responses_in_order_with_their_framing() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    splitter = response_splitter(GET, HEAD_REQUEST, GET, GET)
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    data = OK5 + b"hello" + OK5 + no_content + chunked + b"3\r\nabc\r\n0\r\n\r\n"
    events = pull(splitter, data)
    assert messages(events) == [
        ("head", OK5),
        ("body", b"hello"),
        ("end",),
        ("head", OK5),  # to HEAD: no body whatever Content-Length says
        ("end",),
        ("head", no_content),
        ("end",),
        ("head", chunked),
        ("body", b"3\r\nabc\r\n0\r\n\r\n"),
        ("end",),
    ]
    assert [event.request.method for event in events if isinstance(event, Head)] == [
        b"GET",
        b"HEAD",
        b"GET",
        b"GET",
    ]
    assert splitter.expected == 0


def test_interim_answers_keep_the_request_waiting() -> None:
    splitter = response_splitter(GET)
    events = pull(splitter, b"HTTP/1.1 100 Continue\r\n\r\n" + OK5 + b"hello")
    assert messages(events) == [
        ("head", b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("head", OK5),
        ("body", b"hello"),
        ("end",),
    ]
    assert events[0].head.status == 100 and splitter.expected == 0


def test_101_switches_to_raw() -> None:
    switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"
    splitter = response_splitter(UPGRADE)
    events = pull(splitter, switching + b"\x00frames")
    assert messages(events) == [("head", switching), ("raw", b"\x00frames")]
    assert events[0].head.switched


def test_101_to_a_request_without_upgrade_is_502() -> None:
    with pytest.raises(HttpError) as error:
        pull(response_splitter(GET), b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert error.value.status == 502


def test_a_body_delimited_by_close_ends_with_the_stream() -> None:
    splitter = response_splitter(GET, GET)
    head = b"HTTP/1.1 200 OK\r\n\r\n"
    events = pull(splitter, head + b"all of it")
    assert messages(events) == [("head", head), ("body", b"all of it")]
    assert events[0].head.close
    assert splitter.receive_eof()
    assert splitter.state is State.CLOSED


def test_eof_mid_message_does_not_complete_it() -> None:
    splitter = response_splitter(GET)
    pull(splitter, OK5 + b"he")
    assert splitter.in_message and not splitter.receive_eof()


def test_transfer_encoding_wins_over_content_length_and_closes_after() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
    splitter = response_splitter(GET, GET)
    events = pull(splitter, head + b"1\r\nx\r\n0\r\n\r\n" + OK5)
    assert messages(events) == [("head", head), ("body", b"1\r\nx\r\n0\r\n\r\n"), ("end",)]
    assert events[0].head.close and splitter.state is State.CLOSED


def test_a_coding_other_than_chunked_last_runs_to_close() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
    events = pull(response_splitter(GET), head + b"0\r\n\r\n")
    assert messages(events) == [("head", head), ("body", b"0\r\n\r\n")]


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_responses_are_502(data: bytes) -> None:
    with pytest.raises(HttpError) as error:
        pull(response_splitter(GET), data)
    assert error.value.status == 502


def test_identical_content_lengths_in_a_response_are_one() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\n"
    assert messages(pull(response_splitter(GET), head + b"ok")) == [
        ("head", head),
        ("body", b"ok"),
        ("end",),
    ]


def test_bytes_nobody_asked_for_are_502() -> None:
    with pytest.raises(HttpError) as error:
        pull(ResponseSplitter(), OK5)
    assert error.value.status == 502


def test_http10_response_closes_unless_keep_alive() -> None:
    plain = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    kept = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    assert pull(response_splitter(GET), plain)[0].head.close
    assert not pull(response_splitter(GET), kept)[0].head.close


# -- properties -------------------------------------------------------------------------------

TOKENS = st.sampled_from([b"X-A", b"Accept", b"User-Agent", b"Cookie", b"X-Long-Header-Name"])
VALUES = st.binary(min_size=0, max_size=20).map(
    lambda value: bytes(b for b in value if 0x21 <= b < 0x7F)
)


@st.composite
def request_messages(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"http://abs.test/p", b"*"]))
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: h" + draw(VALUES)]
    for _ in range(draw(st.integers(0, 3))):
        lines.append(draw(TOKENS) + b": " + draw(VALUES))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b""
    if framing == "length":
        payload = draw(st.binary(max_size=40))
        lines.append(b"Content-Length: %d" % len(payload))
        body = payload
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        for chunk in draw(st.lists(st.binary(min_size=1, max_size=20), max_size=3)):
            extension = draw(st.sampled_from([b"", b";a=b", b";x"]))
            body += b"%x%s\r\n%s\r\n" % (len(chunk), extension, chunk)
        body += b"0\r\n"
        for _ in range(draw(st.integers(0, 2))):
            body += draw(TOKENS) + b": " + draw(VALUES) + b"\r\n"
        body += b"\r\n"
    leading = b"\r\n" * draw(st.integers(0, 2))
    return leading + b"\r\n".join(lines) + b"\r\n\r\n" + body


request_streams = st.lists(request_messages(), min_size=1, max_size=4).map(b"".join)


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return [piece for piece in pieces if piece]


def outcome(make, pieces: list[bytes], *, shortcut: bool = False) -> tuple[list, int | None]:
    """Messages before any error, and the error's status. With ``shortcut``,
    :meth:`whole_message` is tried first on every piece: it must give what events give."""
    splitter = make()
    events: list = []
    try:
        for piece in pieces:
            splitter.receive(piece)
            head = splitter.whole_message() if shortcut else None
            if head is not None:  # head, all of its body, end: in one step
                body = piece[piece.find(b"\r\n\r\n") + 4 : splitter.position]
                events += [head, *([Body(body, 0, len(body))] if body else []), END]
            while True:
                event = splitter.next_event()
                if event is NEED_DATA or event is PAUSED:
                    break
                events.append(event)
    except HttpError as exc:
        return messages(events), exc.status
    return messages(events), None


def same_up_to_the_error(one: tuple[list, int | None], other: tuple[list, int | None]) -> None:
    assert one[1] == other[1]
    if one[1] is None:
        assert one[0] == other[0]
    else:  # split input may have forwarded part of what one feed rejects as a whole
        complete = [m for m in one[0] if m[0] != "body"]
        assert [m for m in other[0] if m[0] != "body"][: len(complete)] == complete


@PROFILE
@given(st.data(), request_streams)
def test_any_split_gives_the_same_requests(data: st.DataObject, stream: bytes) -> None:
    whole = outcome(RequestSplitter, [stream])
    assert whole[1] is None
    assert messages_count(whole[0]) == stream.count(b" HTTP/1.1\r\n")
    same_up_to_the_error(whole, outcome(RequestSplitter, data.draw(cuts(stream))))


def messages_count(events: list) -> int:
    return sum(1 for event in events if event == ("end",))


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        if buffer:
            buffer[position % len(buffer)] = value
    return bytes(buffer)


mutated_streams = st.builds(
    mutate, request_streams, st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)))
)


@PROFILE
@given(st.data(), st.one_of(mutated_streams, st.binary(max_size=300)))
def test_arbitrary_bytes_only_raise_http_errors_and_splits_agree(
    data: st.DataObject, stream: bytes
) -> None:
    whole = outcome(RequestSplitter, [stream])
    same_up_to_the_error(whole, outcome(RequestSplitter, data.draw(cuts(stream))))


def any_response_splitter() -> ResponseSplitter:
    return response_splitter(GET, HEAD_REQUEST, GET, UPGRADE)


response_parts = st.sampled_from(
    [
        OK5 + b"hello",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\nraw bytes",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    ]
)


@PROFILE
@given(
    st.data(),
    st.one_of(
        st.lists(response_parts, min_size=1, max_size=5).map(b"".join),
        st.builds(
            mutate,
            st.lists(response_parts, min_size=1, max_size=5).map(b"".join),
            st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3),
        ),
        st.binary(max_size=200),
    ),
)
def test_responses_split_anywhere_give_the_same_messages(
    data: st.DataObject, stream: bytes
) -> None:
    whole = outcome(any_response_splitter, [stream])
    same_up_to_the_error(whole, outcome(any_response_splitter, data.draw(cuts(stream))))


class _Boundaries:
    def __init__(self) -> None:
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True


def llhttp_boundaries(stream: bytes) -> list[int]:
    """Offsets just past each complete request, as llhttp sees them (fed byte by byte)."""
    sink = _Boundaries()
    parser = httptools.HttpRequestParser(sink)
    ends = []
    for offset in range(len(stream)):
        try:
            parser.feed_data(stream[offset : offset + 1])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            break
        if sink.complete:
            sink.complete = False
            ends.append(offset + 1)
    return ends


def splitter_boundaries(stream: bytes) -> list[int]:
    splitter = RequestSplitter()
    splitter.receive(stream)
    ends = []
    try:
        while True:
            event = splitter.next_event()
            if event is END:
                ends.append(splitter.position)
            elif event is NEED_DATA or event is PAUSED:
                break
    except HttpError:
        pass
    return ends


@PROFILE
@given(st.one_of(request_streams, mutated_streams))
def test_message_boundaries_agree_with_llhttp(stream: bytes) -> None:
    ours = splitter_boundaries(stream)
    theirs = llhttp_boundaries(stream)
    shorter = min(len(ours), len(theirs))
    assert ours[:shorter] == theirs[:shorter]  # where both accept, they agree


# -- the whole-message shortcut ------------------------------------------------------------


@PROFILE
@given(st.data(), st.one_of(request_streams, mutated_streams))
def test_the_whole_message_shortcut_agrees_with_the_events(
    data: st.DataObject, stream: bytes
) -> None:
    pieces = data.draw(cuts(stream))
    assert outcome(RequestSplitter, pieces, shortcut=True) == outcome(RequestSplitter, pieces)


def test_the_shortcut_takes_a_plain_get_and_a_plain_answer() -> None:
    requests = RequestSplitter()
    requests.receive(GET)
    head = requests.whole_message()
    assert head is not None and head.raw == GET and requests.position == len(GET)
    assert requests.next_event() is NEED_DATA
    answers = response_splitter(GET)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    answers.receive(answer)
    head = answers.whole_message()
    assert head is not None and head.head.status == 200 and answers.position == len(answer)
    assert answers.expected == 0 and answers.next_event() is NEED_DATA


@pytest.mark.parametrize(
    "data",
    [
        b"\r\n" + GET,
        GET[:-2],
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nab",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a.test\r\n\r\n",
    ],
    ids=["empty-lines-first", "incomplete", "body-to-come", "upgrade", "bare-lf"],
)
def test_the_shortcut_leaves_anything_else_to_the_events(data: bytes) -> None:
    splitter = RequestSplitter()
    splitter.receive(data)
    assert splitter.whole_message() is None
    assert splitter.position == 0 and splitter.state is State.HEAD


@PROFILE
@given(
    st.data(),
    st.one_of(
        st.lists(response_parts, min_size=1, max_size=5).map(b"".join),
        st.builds(
            mutate,
            st.lists(response_parts, min_size=1, max_size=5).map(b"".join),
            st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3),
        ),
    ),
)
def test_the_shortcut_agrees_with_the_events_on_answers(data: st.DataObject, stream: bytes) -> None:
    pieces = data.draw(cuts(stream))
    assert outcome(any_response_splitter, pieces, shortcut=True) == outcome(
        any_response_splitter, pieces
    )
