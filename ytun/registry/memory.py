"""The in-process registry: routes in dicts, gone when the process ends (the default).

:class:`~ytun.registry.sqlite.SqliteRegistry` keeps the same tables as its cache and
writes each change through to its file first."""

from __future__ import annotations

import ipaddress
import secrets

from ..errors import HostTakenError, InvalidHostError
from .base import UNREGISTERED, Registry, Route
from .names import normalize_host

SALT_SIZE = 32


def check_identifier(identifier: str) -> None:
    if not isinstance(identifier, str) or not identifier:
        raise InvalidHostError("the identifier must be a non-empty string")


def normalize_ip(ip: str) -> str:
    """The form a socket reports for a local address (``::1``, not ``0:0::1``)."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise InvalidHostError(f"{ip!r} is not an IP address") from None


def check_port(port: int, ip: str | None) -> None:
    # An IP route matches every port, so its port is not checked.
    if ip is None and (not isinstance(port, int) or not 0 < port <= 0xFFFF):
        raise InvalidHostError(f"TCP port must be 1 to 65535, got {port!r}")


class MemoryRegistry(Registry):
    """Routes in memory. Hosts are matched case-insensitively (stored lower-cased)."""

    def __init__(self, *, salt: bytes | None = None) -> None:
        self.salt = salt if salt is not None else secrets.token_bytes(SALT_SIZE)
        self._hosts: dict[str, str] = {}  # host -> key
        self._ports: dict[int, str] = {}  # port -> key
        self._ips: dict[str, str] = {}  # local ip -> key
        # key -> its routes in the order added (dicts as ordered sets), for label() and
        # has_key() in O(1) whatever the number of clients.
        self._host_routes: dict[str, dict[str, None]] = {}
        self._tcp_routes: dict[str, dict[str, None]] = {}

    # -- reads ---------------------------------------------------------------------------

    def has_key(self, key: str) -> bool:
        return key in self._host_routes or key in self._tcp_routes

    def host_key(self, host: str) -> str | None:
        return self._hosts.get(host)

    def has_host(self, key: str) -> bool:
        return key in self._host_routes

    def label(self, key: str) -> str:
        for routes in (self._host_routes.get(key), self._tcp_routes.get(key)):
            if routes:
                return next(iter(routes))
        return UNREGISTERED

    def hosts(self) -> list[Route]:
        return [Route("host", host, self.label(key)) for host, key in self._hosts.items()]

    def lookup_addr(self, ip: str, port: int) -> str | None:
        key = self._ips.get(ip)
        return key if key is not None else self._ports.get(port)

    def tcp_routes(self) -> list[Route]:
        routes = [Route("tcp-ip", ip, self.label(key)) for ip, key in self._ips.items()]
        routes += [Route("tcp", f":{port}", self.label(key)) for port, key in self._ports.items()]
        return routes

    # -- writes: checks, then the change (a persistent subclass stores in between) -------

    def add_host(self, host: str, identifier: str, *, replace: bool = True) -> str:
        host = normalize_host(host)
        check_identifier(identifier)
        key = self.key_for(identifier)
        current = self._hosts.get(host)
        if current == key:
            return host
        if current is not None and not replace:
            raise HostTakenError(f"host {host} belongs to another client")
        self._store_host(host, key)
        self._set_host(host, key)
        return host

    def delete_host(self, host: str) -> bool:
        try:
            name = normalize_host(host)  # the stored form: "App.test:08080" is app.test:8080
        except InvalidHostError:
            return False  # never stored
        if name not in self._hosts:
            return False
        self._store_host(name, None)
        self._drop_host(name)
        return True

    def add_addr(self, port: int, identifier: str, ip: str | None = None) -> None:
        check_port(port, ip)
        check_identifier(identifier)
        ip = normalize_ip(ip) if ip is not None else None
        key = self.key_for(identifier)
        current = self._ips.get(ip) if ip is not None else self._ports.get(port)
        if current == key:
            return
        self._store_addr(port, ip, key)
        self._set_addr(port, ip, key)

    def delete_addr(self, port: int, ip: str | None = None) -> bool:
        if ip is not None:
            try:
                ip = normalize_ip(ip)
            except InvalidHostError:
                return False
            if ip not in self._ips:
                return False
        elif port not in self._ports:
            return False
        self._store_addr(port, ip, None)
        self._drop_addr(port, ip)
        return True

    # -- storage hooks: a persistent registry writes here, and raises to refuse ----------

    def _store_host(self, host: str, key: str | None) -> None:
        """Make ``host → key`` (None: its removal) durable before memory changes."""

    def _store_addr(self, port: int, ip: str | None, key: str | None) -> None:
        """Make the TCP route ``port``/``ip`` → ``key`` (None: its removal) durable."""

    # -- the tables ----------------------------------------------------------------------

    def _set_host(self, host: str, key: str) -> None:
        if host in self._hosts:
            self._drop_host(host)
        self._hosts[host] = key
        self._host_routes.setdefault(key, {})[host] = None

    def _drop_host(self, host: str) -> None:
        key = self._hosts.pop(host)
        routes = self._host_routes[key]
        del routes[host]
        if not routes:
            del self._host_routes[key]

    def _set_addr(self, port: int, ip: str | None, key: str) -> None:
        if (ip in self._ips) if ip is not None else (port in self._ports):
            self._drop_addr(port, ip)
        if ip is not None:
            self._ips[ip] = key
        else:
            self._ports[port] = key
        self._tcp_routes.setdefault(key, {})[_tcp_label(port, ip)] = None

    def _drop_addr(self, port: int, ip: str | None) -> None:
        key = self._ips.pop(ip) if ip is not None else self._ports.pop(port)
        routes = self._tcp_routes[key]
        del routes[_tcp_label(port, ip)]
        if not routes:
            del self._tcp_routes[key]


def _tcp_label(port: int, ip: str | None) -> str:
    """How a client with only TCP routes is named: ``tcp:PORT`` or ``tcp:IP``."""
    return f"tcp:{port}" if ip is None else f"tcp:{ip}"
