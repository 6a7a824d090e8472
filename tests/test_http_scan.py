"""The data path's HTTP scanning (``ytun._http`` and its twin ``ytun._http_py``): worked
examples on both implementations, and properties that the compiled module answers exactly
as the twin for any head (value, or error and its message)."""

from __future__ import annotations

import os
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ytun import _http_py
from ytun.tunnel import http1, scan

PROPERTY = settings(
    max_examples=int(os.environ.get("YTUN_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

compiled_only = pytest.mark.skipif(
    len(scan.available()) < 2, reason="the compiled module is disabled in this run"
)


@pytest.fixture(params=scan.available(), ids=scan.implementation_name)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


# -- plain_head_end -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buffer", "limit", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1000, 27),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 1000, 27),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 27, 27),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 26, 0),  # too large
        (b"GET / HTTP/1.1\r\nHost: a\r\n", 1000, 0),  # not whole
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r", 1000, 0),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 1000, 0),  # bare LF
        (b"GET / HTTP/1.1\rHost: a\r\n\r\n", 1000, 0),  # bare CR
        (b"GET / HTTP/1.1\r\n\r\n\nx", 1000, 18),  # after the head: not looked at
        (b"", 1000, 0),
    ],
)
def test_plain_head_end(impl, buffer, limit, expected):
    assert impl.plain_head_end(buffer, limit) == expected


@compiled_only
@PROPERTY
@given(
    st.binary(max_size=80).map(lambda b: b.translate(bytes.maketrans(b"\x00\x01", b"\r\n"))),
    st.integers(0, 90),
)
def test_plain_head_end_compiled_answers_as_the_twin(buffer, limit):
    compiled = scan.available()[0]
    assert compiled.plain_head_end(buffer, limit) == _http_py.plain_head_end(buffer, limit)


# -- response_framing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", (200, b"1.1", 12, False, False)),
        (b"HTTP/1.1 204\r\n\r\n", (204, b"1.1", None, False, False)),
        (b"HTTP/1.0 200 OK\r\n\r\n", (200, b"1.0", None, False, True)),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n", (200, b"1.0", None, False, False)),
        (b"HTTP/1.1 200 OK\r\nconnection: x, CLOSE\r\n\r\n", (200, b"1.1", None, False, True)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", (200, b"1.1", 5, False, False)),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked \r\n\r\n",
            (200, b"1.1", None, True, False),
        ),
        (  # Transfer-Encoding wins over Content-Length, and the connection ends
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            (200, b"1.1", None, True, True),
        ),
        (  # not chunked last: the body runs to the end
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            (200, b"1.1", None, False, False),
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length-X: 3\r\n\r\n", (200, b"1.1", None, False, False)),
    ],
)
def test_response_framing(impl, head, expected):
    assert impl.response_framing(head) == expected


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"HTTP/2.0 200 OK\r\n\r\n", "malformed response from the tunnel"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed response from the tunnel"),
        (b"HTTP/1.1 20x OK\r\n\r\n", "malformed response from the tunnel"),
        (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "malformed response header from the tunnel"),
        (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", "malformed response header from the tunnel"),
        (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "malformed response header from the tunnel"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1,\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 19 + b"\r\n\r\n", "malformed Content"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n", "conflicting"),
    ],
)
def test_response_framing_refuses(impl, head, message):
    with pytest.raises(ValueError, match=message):
        impl.response_framing(head)


_names = st.sampled_from(
    [b"Content-Length", b"content-LENGTH", b"Transfer-Encoding", b"TRANSFER-encoding",
     b"Connection", b"connection", b"X-Other", b"Content-Length-X", b"Host"]
)  # fmt: skip
_value_parts = st.sampled_from(
    [b"chunked", b"Chunked", b"gzip", b"close", b"CLOSE", b"keep-alive", b"Keep-Alive",
     b"0", b"12", b"007", b"9" * 18, b"9" * 19, b"-1", b"1x", b"", b" ", b"\t", b"\x0b", b",",
     b", ", b"x", b"\xff"]
)  # fmt: skip
_lines = st.one_of(
    st.builds(
        lambda name, sep, parts: name + sep + b"".join(parts),
        _names,
        st.sampled_from([b":", b": ", b":\t", b" :", b""]),
        st.lists(_value_parts, max_size=5),
    ),
    st.binary(max_size=12).filter(lambda b: b"\r\n" not in b),
)
_status_lines = st.one_of(
    st.sampled_from(
        [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.0 200 OK",
            b"HTTP/1.1 204",
            b"HTTP/1.1 101 Switching",
            b"HTTP/1.2 200 OK",
            b"HTTP/1.1 2000",
            b"HTTP/1.1  200",
            b"http/1.1 200 OK",
            b"HTTP/1.1 200\tOK",
            b"HTTP/1.1 304 Not Modified",
        ]
    ),
    st.binary(max_size=20).filter(lambda b: b"\r\n" not in b),
)


@compiled_only
@PROPERTY
@given(_status_lines, st.lists(_lines, max_size=6))
def test_response_framing_compiled_answers_as_the_twin(status_line, lines):
    head = b"\r\n".join([status_line, *lines]) + b"\r\n\r\n"
    compiled = scan.available()[0]
    try:
        expected = _http_py.response_framing(head)
    except ValueError as exc:
        with pytest.raises(ValueError) as caught:
            compiled.response_framing(head)
        assert str(caught.value) == str(exc)
    else:
        assert compiled.response_framing(head) == expected


# -- request_fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", (b"a.test", 1, None, b"")),
        (b"GET / HTTP/1.1\r\n\r\n", (b"", 0, None, b"")),
        (
            b"POST / HTTP/1.1\r\nhost:\ta.test \r\nContent-Length: 12\r\nX-Other: 1\r\n\r\n",
            (b"a.test", 1, 12, b""),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHOST: b\r\nX-KTunnel-Identifier: x\r\n"
            b"x-ktunnel-identifier:  y \r\n\r\n",
            (b"b", 2, None, b"y"),
        ),
    ],
)
def test_request_fields(impl, head, expected):
    assert impl.request_fields(head) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: " + b"1" * 19 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n",  # not a whole head
    ],
)
def test_request_fields_leaves_the_unusual_to_the_callbacks(impl, head):
    assert impl.request_fields(head) is None


_request_names = st.sampled_from(
    [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding",
     b"Upgrade", b"X-KTunnel-Identifier", b"x-ktunnel-identifier", b"User-Agent", b"Hos",
     b"Hostx", b"Accept"]
)  # fmt: skip
_request_values = st.sampled_from(
    [b"a.test", b" a.test ", b"\ta.test", b"0", b"12", b" 12 ", b"1x", b"+1", b"9" * 19,
     b"chunked", b"websocket", b"", b" ", b"\x0b", b"\xff", b"a\rb", b"a\nb", b"x:y"]
)  # fmt: skip
_request_lines = st.one_of(
    st.builds(
        lambda name, sep, value: name + sep + value,
        _request_names,
        st.sampled_from([b":", b": ", b" :", b""]),
        _request_values,
    ),
    st.binary(max_size=10).filter(lambda b: b"\r\n" not in b),
)


@compiled_only
@PROPERTY
@given(st.lists(_request_lines, max_size=6))
def test_request_fields_compiled_answers_as_the_twin(lines):
    head = b"\r\n".join([b"GET / HTTP/1.1", *lines]) + b"\r\n\r\n"
    compiled = scan.available()[0]
    assert compiled.request_fields(head) == _http_py.request_fields(head)


@PROPERTY
@given(st.lists(_request_lines, max_size=6), st.sampled_from([b"GET", b"POST", b"CONNECT"]))
def test_a_head_reads_the_same_with_or_without_the_header_callbacks(lines, method):
    """``parse_request_head`` takes the fields from ``request_fields`` where it answers, and
    from llhttp's header callbacks otherwise: both give the same head, or the same error."""
    target = b"a.test:80" if method == b"CONNECT" else b"/"
    head = b"\r\n".join([method + b" " + target + b" HTTP/1.1", *lines]) + b"\r\n\r\n"
    results = []
    for module in scan.available():
        for fields in (module.request_fields, lambda raw: None):
            original = http1.request_fields
            http1.request_fields = fields
            try:
                parsed = http1.parse_request_head(head)
            except http1.HttpError as exc:
                results.append(("error", exc.status, str(exc)))
            else:
                results.append(tuple(getattr(parsed, name) for name in http1.RequestHead.__slots__))
            finally:
                http1.request_fields = original
    assert all(result == results[0] for result in results), results
