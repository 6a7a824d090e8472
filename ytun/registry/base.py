"""The registry interface: which client owns which virtual host and which TCP route.

Identifiers are secrets, so no registry stores them. It stores a **client key** instead:
``key_for(identifier)``, the hex SHA-256 of a per-registry random salt followed by the
identifier's UTF-8 bytes. The salt is made once, when the registry's state is created,
and kept with that state (SQLite: its ``meta`` table), so keys stay the same across
restarts and a leaked state file does not let anyone connect. Everything on the server
side (connected clients, routes) is keyed by client key; only the CONNECT carries the
identifier itself, and :meth:`Registry.owner` turns it into a key at once.

Every method is synchronous. Reads (``owner``, ``lookup_host``, ``lookup_addr``,
``label``, ``has_host``, ``has_key``) run on the hot path and must answer from memory.
Writes return once the change is in the registry's own memory; a local persistent
registry (SQLite) has also made it durable by then, while a remote one may still be
sending it: ``await registry.flush()`` waits for that, and the server awaits it before
it answers an admin request. ``close()`` releases the state (idempotent).

Subclasses implement the abstract methods; ``key_for``, ``owner`` and ``lookup_host``
(the wildcard rule) are shared. A subclass sets ``self.salt`` (32 random bytes, or the
stored ones) in its constructor.

Routes:

- virtual hosts are ``name`` or ``name:port`` (:func:`ytun.registry.names.normalize_host`:
  RFC 1123, lower-cased); ``add_host`` refuses anything else with ``InvalidHostError``;
- TCP routes are a port (any local IP), or a local IP (any port), the IP route first.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .names import split_port

#: What ``label()`` answers for a key that owns no route (it never echoes the key).
UNREGISTERED = "<unregistered client>"

RouteKind = Literal["host", "tcp", "tcp-ip"]


@dataclass(frozen=True)
class Route:
    """One route, safe to show: no identifier and no client key.

    ``kind`` is ``"host"`` (``name`` is the virtual host, ``name`` or ``name:port``),
    ``"tcp"`` (``name`` is ``":PORT"``, connections on that port, any local IP) or
    ``"tcp-ip"`` (``name`` is the local IP, connections to that IP, any port).
    ``label`` names the owning client as :meth:`Registry.label` does, so routes of one
    client share a label."""

    kind: RouteKind
    name: str
    label: str


class Registry(abc.ABC):
    """Routes: virtual hosts and TCP addresses to client keys (see the module docstring)."""

    #: The per-registry salt of every client key; set by the subclass's constructor.
    salt: bytes

    # -- identifiers and keys (shared) ---------------------------------------------------

    def key_for(self, identifier: str) -> str:
        """The client key of ``identifier``: hex SHA-256 of the salt and the identifier."""
        return hashlib.sha256(self.salt + identifier.encode("utf-8")).hexdigest()

    def owner(self, identifier: str) -> str | None:
        """The client key if ``identifier`` may connect (a host or a TCP route uses it),
        else None. A dict lookup of the digest: the attacker does not choose the digest,
        so its timing tells nothing about stored keys."""
        if not identifier:
            return None
        key = self.key_for(identifier)
        return key if self.has_key(key) else None

    @abc.abstractmethod
    def has_key(self, key: str) -> bool:
        """True if a virtual host or a TCP route belongs to ``key``."""

    # -- virtual hosts -------------------------------------------------------------------

    @abc.abstractmethod
    def add_host(self, host: str, identifier: str, *, replace: bool = True) -> str:
        """Route ``host`` to the client with ``identifier``; returns the host as stored
        (normalized). Raises ``InvalidHostError`` for a bad name or an empty identifier,
        and ``HostTakenError`` when ``replace`` is False and another client owns the host
        (the same client adding it again is fine)."""

    @abc.abstractmethod
    def delete_host(self, host: str) -> bool:
        """Remove ``host`` (as given to ``add_host``, any case); True if it was there."""

    @abc.abstractmethod
    def host_key(self, host: str) -> str | None:
        """The key stored for exactly ``host`` (already lower-cased), or None."""

    def lookup_host(self, host: str, domain: str | None = None) -> str | None:
        """The client key for a Host header value (any text; never raises):

        1. the exact ``name:port``, then the bare ``name``;
        2. with ``domain`` (the server's wildcard domain, lower-case), a name deeper
           than a registered subdomain goes to that subdomain's owner:
           ``a.b.foo.example.com`` → ``foo.example.com`` (with the port, then bare).
        """
        found = self._match(host, domain)
        return found[1] if found is not None else None

    def matched_host(self, host: str, domain: str | None = None) -> str | None:
        """The registered host a Host header value routes by (as :meth:`lookup_host`
        finds it), or None: a bounded name for it, e.g. a metrics label."""
        found = self._match(host, domain)
        return found[0] if found is not None else None

    def _match(self, host: str, domain: str | None) -> tuple[str, str] | None:
        """``(registered host, client key)`` for a Host value (see lookup_host)."""
        host = host.lower()
        key = self.host_key(host)
        if key is not None:
            return host, key
        name, port = split_port(host)
        if name != host:
            key = self.host_key(name)
            if key is not None:
                return name, key
        if domain:
            suffix = "." + domain
            if name.endswith(suffix):
                head = name[: -len(suffix)]
                dot = head.rfind(".")
                if dot >= 0:  # a deeper name: route it to its subdomain
                    sub = head[dot + 1 :] + suffix
                    if port:
                        key = self.host_key(f"{sub}:{port}")
                        if key is not None:
                            return f"{sub}:{port}", key
                    key = self.host_key(sub)
                    if key is not None:
                        return sub, key
        return None

    @abc.abstractmethod
    def has_host(self, key: str) -> bool:
        """True if at least one virtual host belongs to ``key``."""

    @abc.abstractmethod
    def label(self, key: str) -> str:
        """A printable name for a client: its first host, else ``tcp:PORT`` or ``tcp:IP``,
        else ``<unregistered client>``. Never the identifier, never the key."""

    @abc.abstractmethod
    def hosts(self) -> list[Route]:
        """Every virtual host, in the order they were added."""

    # -- TCP routes ----------------------------------------------------------------------

    @abc.abstractmethod
    def add_addr(self, port: int, identifier: str, ip: str | None = None) -> None:
        """Route TCP connections accepted on ``port`` (or, with ``ip``, to that local IP,
        any port) to the client with ``identifier``. A route given again is replaced."""

    @abc.abstractmethod
    def delete_addr(self, port: int, ip: str | None = None) -> bool:
        """Remove the port route (or, with ``ip``, the IP route); True if it was there."""

    @abc.abstractmethod
    def lookup_addr(self, ip: str, port: int) -> str | None:
        """The client key for a TCP connection by its local address: IP route, then port."""

    @abc.abstractmethod
    def tcp_routes(self) -> list[Route]:
        """Every TCP route: IP routes, then port routes, each in the order added."""

    # -- lifetime ------------------------------------------------------------------------

    async def flush(self) -> None:  # noqa: B027 - a no-op default, not abstract
        """Wait until every change made so far is stored. Local registries store before
        their methods return, so there is nothing to wait for."""

    def problem(self) -> str | None:
        """Why the registry cannot be used now (for a readiness probe), or None."""
        return None

    def watch(self, callback: Callable[[str], None]) -> None:  # noqa: B027 - a no-op default
        """Call ``callback(key)`` when another process removed the last route of client
        ``key`` (a shared registry); local registries change only through their caller."""

    def close(self) -> None:  # noqa: B027 - a no-op default, not abstract
        """Release the stored state; the registry must not be used afterwards."""

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
