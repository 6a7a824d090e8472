"""Micro-benchmarks of the server's per-request HTTP work: httptools head parsing, and the
splitters finding where requests, answers and chunked bodies end."""

from __future__ import annotations

from ytun.tunnel.http1 import parse_request_head
from ytun.tunnel.split import NEED_DATA, PAUSED, RequestSplitter, ResponseSplitter

REQUEST = (
    b"GET /api/items?id=42 HTTP/1.1\r\nHost: app.example.local:8000\r\n"
    b"User-Agent: wrk/4.1.0\r\nAccept: */*\r\nAccept-Encoding: gzip\r\n"
    b"Cookie: session=0123456789abcdef\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n"
    b"Date: Wed, 25 Nov 2026 12:00:00 GMT\r\n\r\nhello world\n"
)
CHUNKED = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in [b"x" * 1000] * 64) + (
    b"0\r\n\r\n"
)


def test_bench_parse_request_head(benchmark):
    head = benchmark(parse_request_head, REQUEST)
    assert head.host == b"app.example.local:8000" and head.keep_alive


def _drain(splitter, data):
    splitter.receive(data)
    count = 0
    while True:
        event = splitter.next_event()
        if event is NEED_DATA or event is PAUSED:
            return count
        count += 1


def test_bench_split_request(benchmark):
    def run():
        return _drain(RequestSplitter(), REQUEST)

    assert benchmark(run) == 2  # head, end


def test_bench_split_pipelined_requests(benchmark):
    pipelined = REQUEST * 16

    def run():
        return _drain(RequestSplitter(), pipelined)

    assert benchmark(run) == 32


def test_bench_split_response(benchmark):
    request = parse_request_head(REQUEST)

    def run():
        splitter = ResponseSplitter()
        splitter.expect(request)
        return _drain(splitter, RESPONSE)

    assert benchmark(run) == 3  # head, body, end


def test_bench_split_chunked_body(benchmark):
    head = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"

    def run():
        splitter = RequestSplitter()
        _drain(splitter, head)
        return _drain(splitter, CHUNKED)

    assert benchmark(run) == 2  # body, end


def test_bench_split_head_one_byte_at_a_time(benchmark):
    pieces = [REQUEST[i : i + 1] for i in range(len(REQUEST))]

    def run():
        splitter = RequestSplitter()
        return sum(_drain(splitter, piece) for piece in pieces)

    assert benchmark(run) == 2
