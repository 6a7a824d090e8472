"""One recorded request and its answer, and how it is shown (secrets masked).

An :class:`Exchange` keeps the request head exactly as it went to the local service, so
a replay sends the real header values; only :func:`summary` and :func:`detail`, the views
the page and the API get, mask them.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

#: Header fields whose values are never shown (the page, the API); replay sends them.
SECRET_FIELDS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
MASK = "••••"


@dataclass(eq=False)
class Message:
    """A request or response as captured: its head and the first bytes of its body."""

    head: bytes = b""  # the raw head, CRLFs included (real values: memory only)
    body: bytearray = field(default_factory=bytearray)  # framing included, at most the cap
    size: int = 0  # body bytes on the wire, framing included
    chunked: bool = False
    complete: bool = False

    @property
    def truncated(self) -> bool:
        return self.size > len(self.body)


@dataclass(eq=False)
class Exchange:
    """A request that went to the local service and what came back."""

    request: Message
    method: str
    target: str
    started: float = field(default_factory=time.time)  # wall clock, for the page
    began: float = field(default_factory=time.monotonic)  # for the duration
    id: int = 0  # given by the log
    upgrade: bool = False  # the request asked to switch protocols
    response: Message | None = None
    status: int | None = None
    reason: str = ""
    duration: float | None = None  # seconds, from the request head to the answer's end
    state: str = "pending"  # pending, complete, upgraded, incomplete
    error: str | None = None  # why an incomplete exchange ended
    local_address: Any = None  # the local service's address, for a replay
    replay_of: int | None = None

    def finish(self, state: str, error: str | None = None) -> None:
        self.state = state
        self.error = error
        self.duration = time.monotonic() - self.began


# -- views ------------------------------------------------------------------------------------


def split_head(raw: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The start line and the header fields of a raw head, in order."""
    lines = raw.decode("latin-1").split("\r\n")
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        fields.append((name.strip(), value.strip()))
    return lines[0], fields


def masked(fields: list[tuple[str, str]]) -> list[list[str]]:
    return [[name, MASK if name.lower() in SECRET_FIELDS else value] for name, value in fields]


def dechunk(data: bytes) -> bytes:
    """The payload of a chunked body, or of as much of it as ``data`` holds (a captured
    prefix may stop anywhere); extensions and trailers are dropped."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            break
        size_text = data[pos:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            break
        if size == 0:
            break
        start = line_end + 2
        out += data[start : start + size]
        pos = start + size + 2
    return bytes(out)


def _utf8(payload: bytes, *, cut: bool) -> str | None:
    """The body as text, or None when it is not UTF-8 (base64 shows it exactly). A body
    cut at the limit may end inside a character: up to 3 bytes of that are left out."""
    for drop in range(4 if cut else 1):
        try:
            return payload[: len(payload) - drop].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def body_view(message: Message) -> dict[str, Any]:
    payload = dechunk(bytes(message.body)) if message.chunked else bytes(message.body)
    text = _utf8(payload, cut=message.truncated)
    return {
        "size": message.size,
        "captured": len(message.body),
        "truncated": message.truncated,
        "chunked": message.chunked,
        "text": text,
        "base64": base64.b64encode(payload).decode("ascii"),
    }


def summary(exchange: Exchange) -> dict[str, Any]:
    """What the list shows: no headers, no bodies."""
    response = exchange.response
    return {
        "id": exchange.id,
        "method": exchange.method,
        "path": exchange.target,
        "status": exchange.status,
        "state": exchange.state,
        "error": exchange.error,
        "started": exchange.started,
        "duration_ms": None if exchange.duration is None else round(exchange.duration * 1000, 3),
        "request_size": exchange.request.size,
        "response_size": None if response is None else response.size,
        "replay_of": exchange.replay_of,
        "upgrade": exchange.upgrade,
    }


def detail(exchange: Exchange) -> dict[str, Any]:
    """Everything recorded, secret header values masked."""
    view = summary(exchange)
    request_line, request_fields = split_head(exchange.request.head)
    view["request"] = {
        "line": request_line,
        "headers": masked(request_fields),
        "body": body_view(exchange.request),
    }
    response = exchange.response
    if response is None or not response.head:
        view["response"] = None
    else:
        status_line, response_fields = split_head(response.head)
        view["response"] = {
            "line": status_line,
            "headers": masked(response_fields),
            "body": body_view(response),
        }
    return view
