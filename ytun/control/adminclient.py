"""Calls to a server's admin API (``ytun hosts|tcp|clients``, ``ytun client --register``),
with the standard library's ``http.client``: blocking, one connection per call, bounded
in time and in the size of the answer it reads."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import AdminError, AdminUnreachableError

#: The admin API answers with a few lines of JSON; more than this is not its answer.
MAX_ANSWER_SIZE = 4 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0

__all__ = ["AdminClient", "check_admin_url"]


def check_admin_url(url: str) -> str:
    """``url`` when it is an ``http://`` or ``https://`` URL with a host; else ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the admin API URL must be http://HOST:PORT or https://…, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"the admin API URL takes no user, query or fragment, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"the admin API URL has a bad port: {url!r}") from None
    return url


class AdminClient:
    """One server's admin API at ``url`` (a path prefix is kept, for a proxy in front)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = check_admin_url(url)
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._ssl_context = ssl_context

    # -- hosts ---------------------------------------------------------------------------

    def add_host(self, host: str | None = None, subdomain: str | None = None) -> dict[str, Any]:
        """Register ``host``, or ``subdomain`` of the server's domain, or a random one;
        ``{"host", "identifier", "url"}``."""
        body: dict[str, str] = {}
        if host is not None:
            body["host"] = host
        if subdomain is not None:
            body["subdomain"] = subdomain
        answer: dict[str, Any] = self.call("POST", "/hosts", body)
        return answer

    def delete_host(self, host: str) -> None:
        self.call("DELETE", "/hosts/" + quote(host, safe=""))

    def hosts(self) -> list[dict[str, Any]]:
        hosts: list[dict[str, Any]] = self.call("GET", "/hosts")["hosts"]
        return hosts

    def clients(self) -> list[dict[str, Any]]:
        clients: list[dict[str, Any]] = self.call("GET", "/clients")["clients"]
        return clients

    # -- TCP routes ----------------------------------------------------------------------

    def add_tcp(self, port: int | None = None, addr: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"port": port} if port is not None else {"addr": addr}
        answer: dict[str, Any] = self.call("POST", "/tcp", body)
        return answer

    def delete_tcp(self, addr: str) -> None:
        self.call("DELETE", "/tcp/" + quote(addr, safe=":"))

    def tcp(self) -> list[dict[str, Any]]:
        routes: list[dict[str, Any]] = self.call("GET", "/tcp")["tcp"]
        return routes

    # -- the exchange --------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The answer's JSON; :class:`AdminError` with the server's reason for an error
        status, :class:`AdminUnreachableError` when no answer came."""
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection: http.client.HTTPConnection
        if self._https:
            context = self._ssl_context or ssl.create_default_context()
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            connection.request(method, self._prefix + path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read(MAX_ANSWER_SIZE + 1)
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise AdminUnreachableError(
                f"cannot reach the admin API at {self.url}: {reason}"
            ) from None
        finally:
            connection.close()
        status = response.status
        if len(raw) > MAX_ANSWER_SIZE:
            raise AdminError(f"the answer of {self.url} is too large to be the admin API's", 0)
        value: Any = None
        if raw:
            try:
                value = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise AdminError(
                    f"{self.url} answered {status} without JSON: is it ytun's admin API?", status
                ) from None
        if status >= 400:
            message = value.get("error") if isinstance(value, dict) else None
            if not isinstance(message, str):
                message = f"the admin API answered {status}"
            raise AdminError(message, status)
        return value
