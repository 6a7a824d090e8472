"""The pure-Python twin of ``ytun._http``: the per-message HTTP/1 scanning of the server's
data path. Both modules answer the same for every input (the tests run on both);
:mod:`ytun.tunnel.scan` picks one."""

from __future__ import annotations

import re

__all__ = ["plain_head_end", "request_fields", "response_framing"]

# A header block where every line is ``name:value``, the name without whitespace: a line
# that is not (no colon, whitespace before the colon, a folded line) is where two readers
# can disagree on a field, so it is refused rather than relayed (RFC 9112 §5.1).
_FIELD_LINES = re.compile(rb"(?:[^\s:]+:[^\r\n]*\r\n)*")
_WHITESPACE_OR_LINE_END = re.compile(rb"\s")
_FRAMING_FIELD = re.compile(rb"\r\n(content-length|transfer-encoding|connection):([^\r\n]*)")


def plain_head_end(buffer: bytes, limit: int) -> int:
    """Offset just past the first blank line of ``buffer`` when it is at most ``limit``
    and every line before it ends in CRLF; 0 otherwise (no whole head, too large, or a
    bare LF or CR: the splitter's slow path says which)."""
    stop = buffer.find(b"\r\n\r\n") + 4
    if stop < 4 or stop > limit:
        return 0
    crlf = buffer.count(b"\r\n", 0, stop)
    if buffer.count(b"\n", 0, stop) != crlf or buffer.count(b"\r", 0, stop) != crlf:
        return 0
    return stop


def request_fields(raw: bytes) -> tuple[bytes, int, int | None, bytes] | None:
    """``(host, host_count, content_length, identifier)`` of a request head that llhttp
    accepted, read from its lines as llhttp's header callbacks would give them (values
    stripped; the last field of a name wins). None, for the callbacks to do it, when the
    head holds anything but plain ``name:value`` lines with a decimal Content-Length, or
    a Transfer-Encoding or Upgrade field (rare, and read with more care)."""
    line_end = raw.find(b"\r\n")
    if line_end < 0 or not raw.endswith(b"\r\n\r\n"):
        return None
    host = identifier = b""
    host_count = 0
    content_length: int | None = None
    for line in raw[line_end + 2 : len(raw) - 2].split(b"\r\n")[:-1]:
        name, colon, value = line.partition(b":")
        if not colon or not name or _WHITESPACE_OR_LINE_END.search(name) or b"\n" in value:
            return None
        if b"\r" in value:
            return None
        name = name.lower()
        if name == b"host":
            host = value.strip()
            host_count += 1
        elif name == b"content-length":
            value = value.strip()
            if not value.isdigit() or len(value) > 18:
                return None
            content_length = int(value)
        elif name == b"transfer-encoding" or name == b"upgrade":
            return None
        elif name == b"x-ktunnel-identifier":
            identifier = value.strip()
    return host, host_count, content_length, identifier


def response_framing(raw: bytes) -> tuple[int, bytes, int | None, bool, bool]:
    """``(status, version, content_length, chunked, close)`` of a complete response head
    (it ends with CRLF CRLF and its lines with CRLF). Malformed framing raises
    :class:`ValueError` with the message to answer 502 with."""
    line_end = raw.find(b"\r\n")
    status_line = raw[:line_end]
    if (
        len(status_line) < 12
        or not status_line.startswith(b"HTTP/1.")
        or status_line[7:8] not in (b"0", b"1")
        or status_line[8:9] != b" "
        or not status_line[9:12].isdigit()
        or status_line[12:13] not in (b"", b" ")
    ):
        raise ValueError("malformed response from the tunnel")
    if _FIELD_LINES.fullmatch(raw, line_end + 2, len(raw) - 2) is None:
        raise ValueError("malformed response header from the tunnel")
    version = status_line[5:8]
    content_length: int | None = None
    chunked = False
    close = version == b"1.0"
    codings: list[bytes] | None = None
    # Only the framing fields matter; they are found in one pass over the lowered head.
    for name, value in _FRAMING_FIELD.findall(raw.lower(), line_end):
        if name == b"content-length":
            for item in value.split(b","):
                item = item.strip()
                if not item.isdigit() or len(item) > 18:
                    raise ValueError("malformed Content-Length from the tunnel")
                length = int(item)
                if content_length is not None and content_length != length:
                    raise ValueError("conflicting Content-Length from the tunnel")
                content_length = length
        elif name == b"transfer-encoding":
            if codings is None:
                codings = []
            codings.extend(token.strip() for token in value.split(b","))
        else:
            tokens = {token.strip() for token in value.split(b",")}
            if b"close" in tokens:
                close = True
            elif b"keep-alive" in tokens and version == b"1.0":
                close = False
    if codings is not None:
        if content_length is not None:
            # RFC 9112 §6.3: Transfer-Encoding wins, and the connection cannot be reused
            content_length = None
            close = True
        if codings and codings[-1] == b"chunked":
            chunked = True
        # else: not chunked last, so the body runs to the connection's end
    return int(status_line[9:12]), version, content_length, chunked, close
