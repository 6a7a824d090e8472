"""The admin API: a running Server's hosts, TCP routes and connected clients as JSON over
HTTP, on a listener of its own (never the public one), behind a bearer token.

:class:`AdminApi` builds the :class:`~ytun.control.web.Router`; a caller may add routes
of its own to ``api.router`` (public ones with ``public=True``) before :meth:`serve`.
Every change is stored (``await server.flush()``) before it is answered, so a 201 or 204
survives a crash of the server right after it. Identifiers are shown once, in the answer
that creates them, and never logged.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from ..errors import (
    HostTakenError,
    InvalidHostError,
    RegistryError,
    UnsafeAdminListenerError,
)
from ..registry.memory import normalize_ip
from ..registry.names import normalize_host
from ..tunnel import Server
from ..tunnel.addr import is_loopback, split_host_port
from . import web

logger = logging.getLogger("ytun.admin")

#: Admin requests are a few short JSON fields; a larger body is answered 413.
MAX_BODY_SIZE = 4096
#: How much of a caller's unknown field name an error message repeats.
SHOWN_NAME = 40

__all__ = ["MAX_BODY_SIZE", "AdminApi", "bearer_guard"]


def bearer_guard(token: str) -> web.Guard:
    """A guard letting through requests with ``Authorization: Bearer <token>``; others get
    401 with ``WWW-Authenticate: Bearer``. The comparison takes the same time wherever
    the first wrong byte is, so the token cannot be guessed byte by byte."""
    expected = token.encode()

    def guard(request: web.Request) -> web.Response | None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("latin-1"), expected
        ):
            return None
        reason = "a bearer token is needed" if not given else "the bearer token is not valid"
        refusal = web.error_response(401, reason)
        refusal.headers["WWW-Authenticate"] = 'Bearer realm="ytun admin"'
        return refusal

    return guard


class AdminApi:
    """The admin routes of ``server``.

    ``public_scheme`` and ``public_port`` make the URLs handed out with new hosts
    (``http://host:port/``; the port is left out when it is the scheme's default);
    ``tcp_host`` is where ``POST /tcp {"port": N}`` listens ("" for every interface),
    normally the public listener's host."""

    def __init__(
        self,
        server: Server,
        *,
        token: str | None = None,
        public_scheme: str = "http",
        public_port: int | None = None,
        tcp_host: str = "",
    ) -> None:
        if token is not None and not token:
            raise ValueError("the admin token must not be empty")
        self.server = server
        self.token = token
        self.public_scheme = public_scheme
        self.public_port = public_port
        self.tcp_host = tcp_host
        self.router = web.Router(bearer_guard(token) if token else None)
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", "/hosts", self.list_hosts),
            ("POST", "/hosts", self.add_host),
            ("DELETE", "/hosts/{host}", self.delete_host),
            ("GET", "/clients", self.list_clients),
            ("GET", "/tcp", self.list_tcp),
            ("POST", "/tcp", self.add_tcp),
            ("DELETE", "/tcp/{addr}", self.delete_tcp),
        ]
        for method, pattern, handler in routes:
            self.router.add(method, pattern, handler)

    async def serve(self, host: str, port: int, **kwargs: Any) -> asyncio.AbstractServer:
        """Listen on ``host:port`` ("" is every interface). Without a token only a
        loopback address is allowed: anyone who reaches the API owns the tunnel."""
        if not self.token and not is_loopback(host):
            raise UnsafeAdminListenerError(
                f"the admin API on {host or 'every interface'} would be open to other "
                "machines: give it a token, or listen on a loopback address"
            )
        return await web.serve(self.router, host, port, max_body=MAX_BODY_SIZE, **kwargs)

    def public_url(self, host: str) -> str:
        """Where the public reaches ``host`` (``name`` or ``name:port``)."""
        default = {"http": 80, "https": 443}.get(self.public_scheme)
        if ":" in host or self.public_port is None or self.public_port == default:
            return f"{self.public_scheme}://{host}/"
        return f"{self.public_scheme}://{host}:{self.public_port}/"

    # -- hosts ---------------------------------------------------------------------------

    async def add_host(self, request: web.Request) -> web.Response:
        fields = _fields(request, "POST /hosts", {"host": str, "subdomain": str})
        if "host" in fields and "subdomain" in fields:
            raise web.WebError(400, "give host or subdomain, not both")
        try:
            if "host" in fields:
                host = normalize_host(fields["host"])
                identifier = self.server.add_host(host, replace=False)
            else:
                host, identifier = self.server.add_subdomain(fields.get("subdomain"))
        except InvalidHostError as exc:
            raise web.WebError(400, str(exc)) from None
        except HostTakenError:
            raise web.WebError(409, "that host is already taken") from None
        except RegistryError as exc:
            raise _not_stored(exc) from None
        await self._stored()
        logger.info("admin API: added host %s", host)
        answer = {"host": host, "identifier": identifier, "url": self.public_url(host)}
        return web.json_response(201, answer, {"Location": f"/hosts/{host}"})

    async def delete_host(self, request: web.Request, host: str) -> web.Response:
        try:
            deleted = self.server.delete_host(host)
        except RegistryError as exc:
            raise _not_stored(exc) from None
        if not deleted:
            raise web.WebError(404, f"no such host: {_short(host)}")
        await self._stored()
        logger.info("admin API: deleted host %s", host)
        return web.Response(204)

    async def list_hosts(self, request: web.Request) -> web.Response:
        connected = self._connected_labels()
        hosts = [
            {
                "host": route.name,
                "url": self.public_url(route.name),
                "client": route.label,
                "connected": route.label in connected,
            }
            for route in self.server.hosts()
        ]
        return web.json_response(200, {"hosts": hosts})

    # -- clients -------------------------------------------------------------------------

    async def list_clients(self, request: web.Request) -> web.Response:
        clients = [
            {
                "label": client.label,
                "peer": _peer(client.peer),
                "connected_since": _iso_time(client.connected_at),
                "streams": client.streams,
                "bytes_in": client.bytes_in,
                "bytes_out": client.bytes_out,
            }
            for client in self.server.clients
        ]
        return web.json_response(200, {"clients": clients})

    # -- TCP routes ----------------------------------------------------------------------

    async def add_tcp(self, request: web.Request) -> web.Response:
        fields = _fields(request, "POST /tcp", {"port": int, "addr": str})
        if ("port" in fields) == ("addr" in fields):
            raise web.WebError(400, 'give port (e.g. {"port": 2222}) or addr, one of them')
        if "port" in fields:
            host, port = self.tcp_host, fields["port"]
            if not 0 <= port <= 0xFFFF:
                raise web.WebError(400, f"port must be 1 to 65535 (0: any free one), got {port}")
        else:
            host, port = _listen_address(fields["addr"])
        if port and self._routed("tcp", f":{port}"):
            raise web.WebError(409, f"port {port} is already tunnelled")
        identifier = secrets.token_urlsafe(32)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound_host, bound_port = await self.server.add_addr(address, identifier)
        except RegistryError as exc:
            raise _not_stored(exc) from None
        except OSError as exc:
            status = 409 if exc.errno == errno.EADDRINUSE else 400
            raise web.WebError(
                status, f"cannot listen on {address}: {exc.strerror or exc}"
            ) from None
        await self._stored()
        logger.info("admin API: tunnelling TCP on %s:%d", bound_host, bound_port)
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        answer = {"addr": f"{shown}:{bound_port}", "port": bound_port, "identifier": identifier}
        return web.json_response(201, answer, {"Location": f"/tcp/{bound_port}"})

    async def delete_tcp(self, request: web.Request, addr: str) -> web.Response:
        """A port route (``2222``, ``:2222``, ``HOST:2222``) or a local-IP route (its
        address, as ``GET /tcp`` lists it)."""
        ip = _route_ip(addr)
        if ip is not None:
            port, routed = 0, self._routed("tcp-ip", ip)
        else:
            port = _route_port(addr) or 0
            routed = bool(port) and self._routed("tcp", f":{port}")
        if not routed:
            raise web.WebError(404, f"no such TCP route: {_short(addr)}")
        try:
            self.server.delete_addr(port, ip=ip)
        except RegistryError as exc:
            raise _not_stored(exc) from None
        await self._stored()
        logger.info("admin API: deleted TCP route %s", ip if ip is not None else f":{port}")
        return web.Response(204)

    async def list_tcp(self, request: web.Request) -> web.Response:
        connected = self._connected_labels()
        routes = [
            {
                "route": route.name,
                "kind": route.kind,
                "client": route.label,
                "connected": route.label in connected,
            }
            for route in self.server.tcp_routes()
        ]
        return web.json_response(200, {"tcp": routes})

    # -- helpers -------------------------------------------------------------------------

    def _routed(self, kind: str, name: str) -> bool:
        """A TCP route of ``kind`` (``tcp``: ``:PORT``; ``tcp-ip``: the address) exists."""
        return any(r.kind == kind and r.name == name for r in self.server.tcp_routes())

    def _connected_labels(self) -> set[str]:
        return {client.label for client in self.server.clients}

    async def _stored(self) -> None:
        try:
            await self.server.flush()
        except RegistryError as exc:
            raise _not_stored(exc) from None


def _fields(request: web.Request, what: str, allowed: dict[str, type]) -> dict[str, Any]:
    """The body's JSON object, with only ``allowed`` fields, each of its type."""
    value = request.json()
    if not isinstance(value, dict):
        raise web.WebError(400, "the body must be a JSON object")
    names = ", ".join(allowed)
    for name, item in value.items():
        kind = allowed.get(name)
        if kind is None:
            raise web.WebError(400, f"unknown field {_short(name)!r}: {what} takes {names}")
        # JSON true is a Python int too: it is not a port.
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            noun = "a whole number" if kind is int else "a string"
            raise web.WebError(400, f"{name} must be {noun}")
    return value


def _listen_address(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` (every interface) to listen on."""
    host, port = split_host_port(addr)
    if not port or any(c.isspace() or c in "/?#@" for c in host):
        raise web.WebError(400, f"addr must be HOST:PORT or :PORT, got {_short(addr)!r}")
    return host, port


def _route_port(addr: str) -> int | None:
    """The port of a TCP route as a path names it: ``2222``, ``:2222`` or ``HOST:2222``."""
    text = addr if not addr.isdigit() else f":{addr}"
    _, port = split_host_port(text)
    return port or None


def _route_ip(addr: str) -> str | None:
    """The address of a local-IP route as a path names it (``10.0.0.5``, ``::1``,
    ``[::1]``), in the registry's form; None when ``addr`` is not an IP address."""
    try:
        return normalize_ip(addr.removeprefix("[").removesuffix("]"))
    except InvalidHostError:
        return None


def _not_stored(exc: RegistryError) -> web.WebError:
    logger.error("admin API: the change could not be stored: %s", exc)
    return web.WebError(503, f"the change could not be stored: {exc}")


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_NAME else text[:SHOWN_NAME] + "…"


def _peer(peer: tuple[Any, ...] | None) -> str | None:
    if not peer:
        return None
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _iso_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
