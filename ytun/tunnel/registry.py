"""Which virtual host and which TCP address belong to which client identifier.

The server talks to a :class:`Registry` only through these methods, so a shared backend
(a database, Redis) can replace the in-process :class:`MemoryRegistry`.
"""

from __future__ import annotations

import abc
import hmac

from .addr import split_host_port


class Registry(abc.ABC):
    """Routes: virtual hosts and TCP addresses to identifiers."""

    @abc.abstractmethod
    def add_host(self, host: str, identifier: str) -> None: ...

    @abc.abstractmethod
    def delete_host(self, host: str) -> None: ...

    @abc.abstractmethod
    def lookup_host(self, host: str) -> str | None:
        """Identifier for a Host header: exact ``host:port`` first, then bare ``host``."""

    @abc.abstractmethod
    def has_host(self, identifier: str) -> bool:
        """True if at least one virtual host maps to ``identifier`` (needed to connect)."""

    @abc.abstractmethod
    def knows(self, identifier: str) -> bool:
        """True if a virtual host or a TCP route uses ``identifier`` (so it may connect).
        Implementations compare in constant time: identifiers are secrets."""

    @abc.abstractmethod
    def label(self, identifier: str) -> str:
        """A printable name for a client, never the identifier itself (it is a secret)."""

    @abc.abstractmethod
    def add_addr(self, port: int, identifier: str, ip: str | None = None) -> None:
        """Route TCP connections accepted on ``port`` (or, with ``ip``, on that local IP)."""

    @abc.abstractmethod
    def delete_addr(self, port: int, ip: str | None = None) -> None: ...

    @abc.abstractmethod
    def lookup_addr(self, ip: str, port: int) -> str | None:
        """Identifier for a TCP connection by its local address: IP route, then port."""


class MemoryRegistry(Registry):
    """The in-process registry. Hosts are matched case-insensitively."""

    def __init__(self) -> None:
        self._hosts: dict[str, str] = {}
        self._ports: dict[int, str] = {}
        self._ips: dict[str, str] = {}

    def add_host(self, host: str, identifier: str) -> None:
        if not host or not identifier:
            raise ValueError("host and identifier must not be empty")
        self._hosts[host.lower()] = identifier

    def delete_host(self, host: str) -> None:
        self._hosts.pop(host.lower(), None)

    def lookup_host(self, host: str) -> str | None:
        host = host.lower()
        identifier = self._hosts.get(host)
        if identifier is None:
            identifier = self._hosts.get(split_host_port(host)[0])
        return identifier

    def has_host(self, identifier: str) -> bool:
        return identifier in self._hosts.values()

    def knows(self, identifier: str) -> bool:
        wanted = identifier.encode()
        owners = {*self._hosts.values(), *self._ports.values(), *self._ips.values()}
        # Every owner is compared, each in constant time: no early exit to time.
        found = False
        for owner in owners:
            found |= hmac.compare_digest(wanted, owner.encode())
        return found

    def label(self, identifier: str) -> str:
        for host, owner in self._hosts.items():
            if owner == identifier:
                return host
        for port, owner in self._ports.items():
            if owner == identifier:
                return f"tcp:{port}"
        for ip, owner in self._ips.items():
            if owner == identifier:
                return f"tcp:{ip}"
        return "<unregistered client>"

    def add_addr(self, port: int, identifier: str, ip: str | None = None) -> None:
        if ip is None:
            self._ports[port] = identifier
        else:
            self._ips[ip] = identifier

    def delete_addr(self, port: int, ip: str | None = None) -> None:
        if ip is None:
            self._ports.pop(port, None)
        else:
            self._ips.pop(ip, None)

    def lookup_addr(self, ip: str, port: int) -> str | None:
        identifier = self._ips.get(ip)
        return identifier if identifier is not None else self._ports.get(port)
