"""Micro-benchmark of the server's public side per keep-alive request, without sockets:
``PublicProtocol`` and its ``ResponseRelay`` between fake transports, so the figure is the
Python work of routing, splitting, forwarding and relaying one request and its answer."""

from __future__ import annotations

import asyncio

import pytest

from ytun import Server
from ytun.tunnel.access import AccessLog
from ytun.tunnel.front import PublicProtocol

REQUEST = b"GET / HTTP/1.1\r\nHost: bench.local:8000\r\nUser-Agent: wrk\r\n\r\n"
# What a browser sends: a dozen fields, each one a header callback if the fields are not
# read from the head in one pass.
BROWSER_REQUEST = (
    b"GET /index.html HTTP/1.1\r\nHost: bench.local:8000\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120\r\n"
    b"Accept: text/html,application/xhtml+xml\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\nCache-Control: no-cache\r\nConnection: keep-alive\r\n"
    b"Cookie: a=b; c=d\r\nPragma: no-cache\r\nReferer: http://bench.local:8000/\r\n"
    b"Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n\r\n"
)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello world\n"


class FakeTransport(asyncio.Transport):
    """Counts what is written; reports a loopback peer."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, list_of_data) -> None:
        for data in list_of_data:
            self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )


class FakeLink:
    """Hands every requested stream over at once, as a connected client would."""

    def __init__(self) -> None:
        self.stream = FakeTransport()
        self.relay = None

    def request_stream(self, kind: int, port: int, protocol) -> None:
        self.relay = protocol
        protocol.connection_made(self.stream)


async def _front(observe: str = "none"):
    access_log = AccessLog(lambda text: None, lambda: None) if observe == "access-log" else None
    server = Server(access_log=access_log) if _takes_access_log() else Server()
    server.add_host("bench.local:8000", "BENCH-ID")
    if observe == "metrics":  # what the Prometheus metrics cost per request
        from ytun.control.metrics import TunnelMetrics

        server.add_observer(TunnelMetrics(server))
    link = FakeLink()
    server.link_for = lambda identifier: link  # the only client
    public = PublicProtocol(server)
    transport = FakeTransport()
    public.connection_made(transport)  # the server's bookkeeping needs a running loop
    return public, link, transport


def _takes_access_log() -> bool:
    import inspect

    return "access_log" in inspect.signature(Server).parameters


@pytest.mark.parametrize("observe", ["none", "access-log", "metrics"])
def test_bench_keep_alive_request_through_the_front(benchmark, observe):
    """``access-log``: the default log, its batches written to nowhere; ``metrics``: the
    Prometheus counters; against ``none`` each is what it costs per request."""
    _bench_front(benchmark, observe, REQUEST)


def test_bench_keep_alive_browser_request_through_the_front(benchmark):
    """A browser's request head (13 fields) instead of wrk's (2), without a log."""
    _bench_front(benchmark, "none", BROWSER_REQUEST)


def _bench_front(benchmark, observe: str, request: bytes) -> None:
    loop = asyncio.new_event_loop()

    async def run() -> None:
        public, link, transport = await _front(observe)

        def one_request() -> None:
            public.data_received(request)
            link.relay.data_received(RESPONSE)

        one_request()  # the stream is opened by the first request and reused after
        before = transport.written
        benchmark(one_request)
        assert link.stream.written > len(request)  # requests went down the stream...
        assert transport.written > before  # ...and answers came back to the public side
        public.connection_lost(None)

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
