"""HTTP/1.x glue for the server's data path: parse request heads with httptools, and write
koding-compatible error responses. Where messages start and end is :mod:`.split`'s job.

The tunnel forwards the bytes it received; it parses only what routing and request
boundaries need.
"""

from __future__ import annotations

import httptools

from .scan import request_fields

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


class _TargetCollector:
    """httptools callbacks for a head whose fields :func:`request_fields` reads (only the
    ones needed, so httptools registers no others: no Python call per header)."""

    __slots__ = ("head", "parser")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self.parser: httptools.HttpRequestParser | None = None

    def on_headers_complete(self) -> None:
        # Ask now: once a message without a body is complete, llhttp resets its flags and
        # should_keep_alive() forgets "Connection: close".
        self.head.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]

    def on_url(self, url: bytes) -> None:
        self.head.target += url


class _HeadCollector(_TargetCollector):
    """The callbacks for any other head: every header through :meth:`on_header`."""

    __slots__ = ()

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
    fields = request_fields(data)
    collector = _HeadCollector(head) if fields is None else _TargetCollector(head)
    parser = collector.parser = httptools.HttpRequestParser(collector)
    head.keep_alive = True
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT and Upgrade requests: the head is all we feed anyway
    except (httptools.HttpParserError, ValueError) as exc:
        raise HttpError(400, "malformed request") from exc
    if fields is not None:
        head.host, head.host_count, head.content_length, head.identifier = fields
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
    508: "Loop Detected",
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


# -- forwarding headers -------------------------------------------------------------------


def _field_name(line: bytes) -> bytes:
    """A header line's name, lower case, ``_`` read as ``-``: CGI-style servers (WSGI,
    PHP) give ``X_Forwarded_For`` and ``X-Forwarded-For`` the same variable."""
    return line.partition(b":")[0].lower().replace(b"_", b"-")


def _is_forwarding(name: bytes) -> bool:
    return name == b"forwarded" or name.startswith(b"x-forwarded-")


def via_has_mark(value: bytes, mark: bytes) -> bool:
    """Whether a Via field value lists ``mark`` as a received-by (``1.1 ytun-…``)."""
    for hop in value.split(b","):
        parts = hop.split()
        if len(parts) >= 2 and parts[1] == mark:
            return True
    return False


def rewrite_forwarding(
    raw: bytes,
    *,
    peer: bytes,
    scheme: bytes,
    host: bytes,
    via_mark: bytes,
    trusted: bool,
) -> tuple[bytes, bool]:
    """``raw`` (a request head that carries forwarding or Via fields; llhttp has checked
    it: no folded lines, no space before a colon) as the origin should get it, and whether
    its Via already holds ``via_mark`` (the request came back to this server).

    Untrusted: every ``X-Forwarded-*`` and ``Forwarded`` field is dropped and ours are
    added. Trusted (a proxy in front): they stay; ``X-Forwarded-For`` gets ``, peer``
    appended, Proto and Host are added only where missing. Either way ``1.1 via_mark`` is
    appended to the last Via field, or a Via field is added."""
    lines = raw[:-4].split(b"\r\n")
    kept = [lines[0]]
    looped = False
    last_via = -1
    last_for = -1
    has_proto = has_host = False
    for line in lines[1:]:
        name = _field_name(line)
        if name == b"via":
            if via_has_mark(line.partition(b":")[2], via_mark):
                looped = True
            last_via = len(kept)
        elif _is_forwarding(name):
            if not trusted:
                continue
            if name == b"x-forwarded-for" and line[:16].lower() == b"x-forwarded-for:":
                last_for = len(kept)
            elif name == b"x-forwarded-proto":
                has_proto = True
            elif name == b"x-forwarded-host":
                has_host = True
        kept.append(line)
    if last_for >= 0:
        kept[last_for] = kept[last_for].rstrip(b" \t") + b", " + peer
    else:
        kept.append(b"X-Forwarded-For: " + peer)
    if not has_proto:
        kept.append(b"X-Forwarded-Proto: " + scheme)
    if not has_host:
        kept.append(b"X-Forwarded-Host: " + host)
    hop = b"1.1 " + via_mark
    if last_via >= 0:
        kept[last_via] = kept[last_via].rstrip(b" \t") + b", " + hop
    else:
        kept.append(b"Via: " + hop)
    kept.append(b"\r\n")
    return b"\r\n".join(kept), looped
