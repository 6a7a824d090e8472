"""Health probes of one tunnel server, public (no token): liveness and readiness.

``GET /healthz`` answers 200 ``{"status": "ok"}`` while the server listens (503 when it
does not); ``GET /readyz`` answers 200 ``{"status": "ready"}`` when
:meth:`ytun.Server.readiness` finds nothing wrong, else 503 with the reasons, e.g.
``{"status": "not ready", "reason": "registry: the state file is closed"}``.
The answers say nothing about clients, hosts or identifiers.
"""

from __future__ import annotations

from ..tunnel.server import Server
from . import web


def add_health_routes(router: web.Router, server: Server) -> None:
    """Serve ``GET /healthz`` and ``GET /readyz`` for ``server`` on ``router`` (public)."""

    async def healthz(request: web.Request) -> web.Response:
        if server.listening:
            return web.json_response(200, {"status": "ok"})
        return web.json_response(503, {"status": "not listening"})

    async def readyz(request: web.Request) -> web.Response:
        reasons = server.readiness()
        if not reasons:
            return web.json_response(200, {"status": "ready"})
        return web.json_response(503, {"status": "not ready", "reason": "; ".join(reasons)})

    router.add("GET", "/healthz", healthz, public=True)
    router.add("GET", "/readyz", readyz, public=True)
