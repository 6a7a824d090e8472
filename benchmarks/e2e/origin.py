"""The benchmark origin: a small, fast HTTP/1.1 server (uvloop + httptools asyncio Protocol).

``python -m benchmarks.e2e.origin --port P`` listens on 127.0.0.1:P and answers

- ``GET /``            → 200, the 12 bytes ``hello world\\n`` with Content-Length;
- ``GET /bytes?n=N``   → 200, N zero bytes with Content-Length, written in 1 MiB chunks
  with backpressure (``pause_writing`` / ``resume_writing``);
- ``POST /upload``     → reads and discards the body, answers its length in decimal;
- anything else        → 404.

Keep-alive, ``Connection: close``, ``Expect: 100-continue`` and pipelining are handled;
requests on one connection are answered strictly in order. It prints
``origin listening on 127.0.0.1:P`` once it accepts connections and stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections import deque
from urllib.parse import parse_qs, urlsplit

import httptools

CHUNK = 1024 * 1024
_ZEROS = bytes(CHUNK)
_HELLO = b"hello world\n"
_WRITE_HIGH = 4 * CHUNK
_WRITE_LOW = CHUNK
MAX_BYTES = 1 << 40


def _head(
    status: bytes, length: int, keep_alive: bool, content_type: bytes = b"text/plain"
) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Length: "
        + str(length).encode()
        + b"\r\nContent-Type: "
        + content_type
        + (b"" if keep_alive else b"\r\nConnection: close")
        + b"\r\n\r\n"
    )


_HELLO_KEEP = _head(b"200 OK", len(_HELLO), True) + _HELLO
_HELLO_CLOSE = _head(b"200 OK", len(_HELLO), False) + _HELLO


class _Reply:
    """One queued answer: a head (and small body) plus ``remaining`` zero bytes to stream."""

    __slots__ = ("close", "data", "remaining")

    def __init__(self, data: bytes, remaining: int, close: bool) -> None:
        self.data = data
        self.remaining = remaining
        self.close = close


class OriginProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.expect_continue = False
        self.body_size = 0
        self.replies: deque[_Reply] = deque()
        self.paused = False
        self.closing = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(b"400 Bad Request")
        except httptools.HttpParserError:
            self._fail(b"400 Bad Request")

    def eof_received(self) -> bool:
        # Finish what is queued, then close (half-closed clients still get their answers).
        self.replies.append(_Reply(b"", 0, True))
        self._pump()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.replies.clear()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_continue = False
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        if self.expect_continue and self.transport is not None and not self.replies:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path, _, query = self.url.partition(b"?")
        if method == b"GET" and path == b"/":
            reply = _Reply(_HELLO_KEEP if keep_alive else _HELLO_CLOSE, 0, not keep_alive)
        elif method == b"GET" and path == b"/bytes":
            size = _query_int(query, "n")
            if size is None:
                body = b"n must be an integer between 0 and 2**40\n"
                reply = _Reply(
                    _head(b"400 Bad Request", len(body), keep_alive) + body, 0, not keep_alive
                )
            else:
                reply = _Reply(
                    _head(b"200 OK", size, keep_alive, b"application/octet-stream"),
                    size,
                    not keep_alive,
                )
        elif method == b"POST" and path == b"/upload":
            body = str(self.body_size).encode()
            reply = _Reply(_head(b"200 OK", len(body), keep_alive) + body, 0, not keep_alive)
        else:
            body = b"not found\n"
            reply = _Reply(_head(b"404 Not Found", len(body), keep_alive) + body, 0, not keep_alive)
        self.replies.append(reply)
        self._pump()

    # -- writing -------------------------------------------------------------------------

    def _pump(self) -> None:
        transport = self.transport
        while transport is not None and not self.paused and self.replies:
            reply = self.replies[0]
            if reply.data:
                transport.write(reply.data)
                reply.data = b""
            while reply.remaining and not self.paused:
                if reply.remaining >= CHUNK:
                    transport.write(_ZEROS)
                    reply.remaining -= CHUNK
                else:
                    transport.write(_ZEROS[: reply.remaining])
                    reply.remaining = 0
            if reply.remaining:
                return
            self.replies.popleft()
            if reply.close:
                self.closing = True
                self.replies.clear()
                transport.close()
                return

    def _fail(self, status: bytes) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.write(_head(status, 0, False))
            self.transport.close()


def _query_int(query: bytes, name: str) -> int | None:
    try:
        values = parse_qs(urlsplit("?" + query.decode("latin-1")).query).get(name)
        value = int(values[0]) if values else -1
    except ValueError:
        return None
    return value if 0 <= value <= MAX_BYTES else None


async def serve(host: str, port: int, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        OriginProtocol, host, port, backlog=backlog, reuse_address=True
    )
    bound = server.sockets[0].getsockname()
    print(f"origin listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.e2e.origin", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port (0 picks one)")
    parser.add_argument("--backlog", type=int, default=4096, help="listen backlog")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # still works, only slower
        runner = asyncio.run
    try:
        runner(serve(args.host, args.port, args.backlog))
    except OSError as exc:
        print(f"origin: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
