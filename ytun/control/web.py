"""A small HTTP/1.1 server for ytun's own pages and APIs (the admin API, the inspector).

It is not on the tunnel's data path, so it favours bounds over speed: a request head and
body each have a size limit and a deadline, one request is handled at a time per
connection (keep-alive, no pipelining ahead of the answer), and a handler's exception
becomes a 500 with a plain body and one log line, never a traceback in the loop.

Handlers are ``async def handler(request, **path_params) -> Response | EventStream``,
registered on a :class:`Router` with patterns such as ``/hosts/{host}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import httptools

logger = logging.getLogger("ytun.web")

MAX_HEAD_SIZE = 16 * 1024
MAX_BODY_SIZE = 64 * 1024
#: A request (head and body) must arrive whole within this time.
REQUEST_TIMEOUT = 10.0
#: A keep-alive connection with no request is closed after this time.
IDLE_TIMEOUT = 60.0
#: Answers that never carry a body (nor the fields describing one).
NO_BODY_STATUSES = frozenset({204, 304})


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lowercase names; a repeated field keeps its last value
    body: bytes
    peer: Any = None

    def json(self) -> Any:
        """The body as JSON; :class:`WebError` 400 when it is not JSON."""
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WebError(400, f"the body is not JSON: {exc}") from None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class EventStream:
    """A server-sent event stream: each string the iterator yields is sent as one event's
    data; the stream ends when the iterator does or the peer goes away."""

    events: AsyncIterator[str]
    headers: dict[str, str] = field(default_factory=dict)


class WebError(Exception):
    """Raised by a handler to answer ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_response(status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode() + b"\n"
    return Response(status, body, "application/json", headers or {})


def error_response(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


Handler = Callable[..., Awaitable[Response | EventStream]]
#: Looks at a request before its handler: a Response refuses it, None lets it through.
Guard = Callable[[Request], Response | None]


class Router:
    """Method + path pattern → handler. ``{name}`` matches one path segment, URL-decoded.

    With a ``guard`` (authentication), every request is checked by it first, unknown
    paths included, unless its path matches a route added with ``public=True``."""

    def __init__(self, guard: Guard | None = None) -> None:
        self._guard = guard
        self._routes: list[tuple[str, re.Pattern[str], Handler, bool]] = []

    def add(self, method: str, pattern: str, handler: Handler, *, public: bool = False) -> None:
        parts = re.split(r"\{(\w+)\}", pattern)  # literal, name, literal, name, ...
        regex = "".join(
            f"(?P<{part}>[^/]+)" if odd else re.escape(part) for odd, part in _alternating(parts)
        )
        self._routes.append((method.upper(), re.compile(f"^{regex}$"), handler, public))

    async def dispatch(self, request: Request) -> Response | EventStream:
        matches = [
            (method, match, handler, public)
            for method, regex, handler, public in self._routes
            if (match := regex.match(request.path)) is not None
        ]
        if self._guard is not None and not any(public for *_, public in matches):
            # Before 404 and 405: without a token nothing is learnt, not even which
            # paths exist.
            refusal = self._guard(request)
            if refusal is not None:
                return refusal
        allowed: list[str] = []
        for method, match, handler, _ in matches:
            if method != request.method:
                allowed.append(method)
                continue
            params = {name: unquote(value) for name, value in match.groupdict().items()}
            return await handler(request, **params)
        if allowed:
            response = error_response(405, f"{request.method} is not allowed here")
            response.headers["Allow"] = ", ".join(sorted(set(allowed)))
            return response
        return error_response(404, f"no such path: {request.path}")


def _alternating(parts: list[str]) -> list[tuple[bool, str]]:
    return [(index % 2 == 1, part) for index, part in enumerate(parts)]


class _Incoming:
    """httptools callbacks collecting one request."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.head_done = False
        self.keep_alive = False
        self.complete = False
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        # llhttp knows a message's persistence only until it completes, so read it here
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > self.max_body:
            raise WebError(413, f"the body is larger than {self.max_body} bytes")
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class WebProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection to a :class:`Router`."""

    def __init__(self, router: Router, max_body: int = MAX_BODY_SIZE) -> None:
        self._router = router
        self._max_body = max_body
        self._transport: asyncio.Transport | None = None
        self._incoming = _Incoming(max_body)
        self._head_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._arm(IDLE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._task is not None:  # the peer pipelines: wait for the answer first
            self._fail(400, "send the next request after the answer")
            return
        if not self._head_bytes and not self._incoming.head_done:
            self._arm(REQUEST_TIMEOUT)
        if not self._incoming.head_done:
            self._head_bytes += len(data)
        try:
            self._incoming.parser.feed_data(data)
        except WebError as exc:
            self._fail(exc.status, str(exc))
            return
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrades are not served here")
            return
        except httptools.HttpParserError as exc:
            cause = exc.__cause__ or exc.__context__  # httptools wraps a callback's error
            if isinstance(cause, WebError):
                self._fail(cause.status, str(cause))
            else:
                self._fail(400, f"malformed request: {exc}")
            return
        if self._incoming.complete:
            self._start()
        elif not self._incoming.head_done and self._head_bytes > MAX_HEAD_SIZE:
            self._fail(431, "the request head is too large")

    def _start(self) -> None:
        incoming = self._incoming
        url = urlsplit(incoming.url.decode("latin-1"))
        request = Request(
            method=(incoming.parser.get_method() or b"").decode("latin-1"),
            path=url.path,  # still quoted: the router decodes each parameter itself
            query=dict(parse_qsl(url.query)),
            headers=incoming.headers,
            body=bytes(incoming.body),
            peer=self._transport.get_extra_info("peername") if self._transport else None,
        )
        keep_alive = incoming.keep_alive
        self._incoming = _Incoming(self._max_body)
        self._head_bytes = 0
        if self._timer is not None:
            self._timer.cancel()
        self._task = asyncio.get_running_loop().create_task(self._answer(request, keep_alive))

    async def _answer(self, request: Request, keep_alive: bool) -> None:
        try:
            try:
                result = await self._router.dispatch(request)
            except WebError as exc:
                result = error_response(exc.status, str(exc))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s %s failed", request.method, request.path)
                result = error_response(500, "internal error (see the server's log)")
            if isinstance(result, EventStream):
                await self._stream(result)
                return
            self._write(result, keep_alive)
        finally:
            self._task = None
        if keep_alive and self._transport is not None:
            self._arm(IDLE_TIMEOUT)

    def _write(self, response: Response, keep_alive: bool) -> None:
        if self._transport is None:
            return
        reason = HTTPStatus(response.status).phrase
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        body = response.body
        if response.status in NO_BODY_STATUSES:
            body = b""  # RFC 9110: no body, and no Content-Length, after 204 and 304
        else:
            lines += [
                f"Content-Type: {response.content_type}",
                f"Content-Length: {len(body)}",
            ]
        lines.append("Cache-Control: no-store")
        lines += [f"{name}: {value}" for name, value in response.headers.items()]
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._transport.write(head + body)
        if not keep_alive:
            self._transport.close()

    async def _stream(self, stream: EventStream) -> None:
        transport = self._transport
        if transport is None:
            return
        lines = [
            "HTTP/1.1 200 OK",
            "Content-Type: text/event-stream",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        lines += [f"{name}: {value}" for name, value in stream.headers.items()]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            async for event in stream.events:
                if transport.is_closing():
                    break
                data = "".join(f"data: {line}\n" for line in event.split("\n"))
                transport.write(data.encode() + b"\n")
        finally:
            aclose = getattr(stream.events, "aclose", None)
            if aclose is not None:
                await aclose()
            transport.close()

    def _fail(self, status: int, message: str) -> None:
        self._write(error_response(status, message), keep_alive=False)

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _expired(self) -> None:
        if self._transport is None or self._task is not None:
            return
        if self._head_bytes:
            self._fail(408, "the request did not arrive in time")
        else:
            self._transport.close()


async def serve(
    router: Router, host: str, port: int, *, max_body: int = MAX_BODY_SIZE, **kwargs: Any
) -> asyncio.AbstractServer:
    """Listen on ``host:port`` and answer with ``router``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: WebProtocol(router, max_body), host, port, **kwargs)
