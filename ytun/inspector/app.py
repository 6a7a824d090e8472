"""The inspector's page, JSON API and live feed, as routes of :mod:`ytun.control.web`.

``GET /``                              the page (and its script and style under /static/)
``GET /api/requests``                  the recorded exchanges, newest first, as summaries
``GET /api/requests/{id}``             one exchange: heads (secrets masked) and bodies
``POST /api/requests/{id}/replay``     send it again; 201 with the new exchange
``DELETE /api/requests``               forget every exchange
``GET /api/events``                    server-sent events: each exchange added or changed

Served on loopback, a request must also name a loopback host (``Host``), so a web page
elsewhere cannot reach it through a DNS name it rebinds to 127.0.0.1; and a request that
changes something (replay, clear) from a browser must come from the inspector's own page
(``Origin``).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from ..control.web import EventStream, Request, Response, Router, WebError, json_response
from ..errors import ReplayError
from .exchange import Exchange, detail, summary
from .where import host_of, is_loopback_host

if TYPE_CHECKING:
    from .inspector import Inspector

#: The page's files: name -> content type. Nothing else is served from the package.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "inspector.js": "text/javascript; charset=utf-8",
    "inspector.css": "text/css; charset=utf-8",
}
#: The page loads only its own files: no inline script, no other origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def static_file(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


def make_router(inspector: Inspector, *, check_host: bool = True) -> Router:
    def guard(request: Request) -> Response | None:
        host = request.headers.get("host", "")
        if check_host and not is_loopback_host(host_of(host)):
            raise WebError(403, "the inspector answers only requests for a loopback host")
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
                raise WebError(403, "requests that change something must come from this page")
        return None

    router = Router(guard)

    async def page(request: Request) -> Response:
        return _static("index.html")

    async def static(request: Request, name: str) -> Response:
        if name not in STATIC_FILES:
            raise WebError(404, f"no such file: {name}")
        return _static(name)

    async def list_requests(request: Request) -> Response:
        exchanges = inspector.log.newest_first()
        return json_response(
            200,
            {"requests": [summary(e) for e in exchanges], **inspector.log.stats()},
        )

    async def one_request(request: Request, exchange_id: str) -> Response:
        return json_response(200, detail(_find(exchange_id)))

    async def replay_request(request: Request, exchange_id: str) -> Response:
        original = _find(exchange_id)
        try:
            new = await inspector.replay(original.id)
        except ReplayError as exc:
            raise WebError(exc.status, str(exc)) from None
        return json_response(201, detail(new))

    async def clear(request: Request) -> Response:
        inspector.log.clear()
        return json_response(200, {"cleared": True})

    async def events(request: Request) -> EventStream:
        if not inspector.log.can_subscribe():
            raise WebError(503, "too many open live feeds")
        return EventStream(inspector.log.feed())

    def _find(exchange_id: str) -> Exchange:
        if not exchange_id.isdigit():
            raise WebError(404, "no such request")
        exchange = inspector.log.get(int(exchange_id))
        if exchange is None:
            raise WebError(404, "no such request (the inspector keeps only the last ones)")
        return exchange

    router.add("GET", "/", page)
    router.add("GET", "/static/{name}", static)
    router.add("GET", "/api/requests", list_requests)
    router.add("DELETE", "/api/requests", clear)
    router.add("GET", "/api/requests/{exchange_id}", one_request)
    router.add("POST", "/api/requests/{exchange_id}/replay", replay_request)
    router.add("GET", "/api/events", events)
    return router


def _static(name: str) -> Response:
    return Response(200, static_file(name), STATIC_FILES[name], dict(PAGE_HEADERS))
