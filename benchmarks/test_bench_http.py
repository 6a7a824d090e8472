"""Micro-benchmarks of the server's per-request HTTP work: httptools head parsing, response
head parsing, and finding where bodies end."""

from __future__ import annotations

from ytun.tunnel.http1 import BodyScanner, find_head_end, parse_request_head, parse_response_head

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


def test_bench_find_and_parse_response_head(benchmark):
    def run():
        end = find_head_end(RESPONSE)
        return parse_response_head(RESPONSE[:end])

    head = benchmark(run)
    assert head.status == 200 and head.content_length == 12


def test_bench_scan_chunked_body(benchmark):
    def run():
        scanner = BodyScanner(chunked=True)
        return scanner.scan(CHUNKED, 0, len(CHUNKED)), scanner.done

    assert benchmark(run) == (len(CHUNKED), True)
