"""HTTP/1.x glue for the server's data path: parse request heads with httptools, and write
koding-compatible error responses. Where messages start and end is :mod:`.split`'s job.

The tunnel forwards the bytes it received; it parses only what routing and request
boundaries need.
"""

from __future__ import annotations

import httptools

#: The largest message head the server reads (requests and answers alike).
MAX_HEAD_SIZE = 64 * 1024


class HttpError(Exception):
    """A message the server cannot forward as it is; ``status`` is what it answers (4xx
    for a request, 502 for an answer from the tunnel)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestHead:
    """What the server needs from one request head."""

    __slots__ = (
        "method",
        "target",
        "version",
        "host",
        "keep_alive",
        "upgrade",
        "websocket",
        "content_length",
        "chunked",
        "identifier",
        "host_count",
        "transfer_codings",
        "absolute_host",
    )

    def __init__(self) -> None:
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.upgrade = False
        self.host = b""
        self.host_count = 0
        self.content_length: int | None = None
        self.chunked = False
        # every coding of every Transfer-Encoding field, in order; None without the field
        self.transfer_codings: list[bytes] | None = None
        # the authority of an absolute-form target (``GET http://host/ HTTP/1.1``)
        self.absolute_host: bytes | None = None
        self.websocket = False
        self.identifier = b""
        self.target = b""


class _HeadCollector:
    """httptools callbacks (only the ones needed, so httptools registers no others)."""

    __slots__ = ("head", "_connection_upgrade", "parser")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self._connection_upgrade = False
        self.parser: httptools.HttpRequestParser | None = None

    def on_headers_complete(self) -> None:
        # Ask now: once a message without a body is complete, llhttp resets its flags and
        # should_keep_alive() forgets "Connection: close".
        self.head.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]

    def on_url(self, url: bytes) -> None:
        self.head.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        head = self.head
        if name == b"host":
            head.host = value.strip()
            head.host_count += 1
        elif name == b"content-length":
            head.content_length = int(value)
        elif name == b"transfer-encoding":
            head.chunked = value.strip().lower().endswith(b"chunked")
            codings = head.transfer_codings
            if codings is None:
                codings = head.transfer_codings = []
            codings.extend(token.strip().lower() for token in value.split(b","))
        elif name == b"upgrade":
            head.websocket = b"websocket" in value.lower()
        elif name == b"x-ktunnel-identifier":
            head.identifier = value.strip()


def parse_request_head(data: bytes) -> RequestHead:
    """Parse one complete request head (up to and including the blank line)."""
    head = RequestHead()
    collector = _HeadCollector(head)
    parser = collector.parser = httptools.HttpRequestParser(collector)
    head.keep_alive = True
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT and Upgrade requests: the head is all we feed anyway
    except (httptools.HttpParserError, ValueError) as exc:
        raise HttpError(400, "malformed request") from exc
    head.method = parser.get_method()
    head.version = parser.get_http_version()
    head.upgrade = parser.should_upgrade() and head.method != b"CONNECT"
    head.websocket = head.websocket and head.upgrade and head.method == b"GET"
    return head


def find_head_end(data: bytes | bytearray, start: int = 0) -> int:
    """Offset just past the blank line ending a head in ``data``, or -1, with bare LF
    accepted: for the client reading the server's ``200 Connected to Tunnel\\n\\n``, which
    koding/tunnel sends with bare LF. HTTP messages on the data path are split by
    :mod:`.split`, where lines end in CRLF only."""
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        bare = data.find(b"\n\n", start, end)
        return bare + 2 if bare >= 0 else end + 4
    bare = data.find(b"\n\n", start)
    return bare + 2 if bare >= 0 else -1


_REASONS = {
    400: "Bad Request",
    405: "Method Not Allowed",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def error_response(
    status: int, message: str, *, close: bool = False, version: str = "1.1"
) -> bytes:
    """A plain-text error in the shape of Go's ``http.Error`` (the body ends with LF)."""
    body = (message + "\n").encode("utf-8")
    connection = "Connection: close\r\n" if close else ""
    return (
        f"HTTP/{version} {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body)}\r\n{connection}\r\n"
    ).encode("latin-1") + body


def go_quote(text: str) -> str:
    """Go's ``%q`` for the plain strings a Host header holds."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
