"""Who owns which route: virtual hosts and TCP routes to client keys (hashed identifiers).

:class:`Registry` is the interface (see :mod:`ytun.registry.base` for the contract),
:class:`MemoryRegistry` the in-process default, :class:`SqliteRegistry` the one that
survives restarts; :mod:`ytun.registry.names` checks host names."""

from .base import UNREGISTERED, Registry, Route, RouteKind
from .memory import MemoryRegistry
from .names import normalize_host, normalize_subdomain, random_subdomain
from .sqlite import SqliteRegistry

__all__ = [
    "UNREGISTERED",
    "MemoryRegistry",
    "Registry",
    "Route",
    "RouteKind",
    "SqliteRegistry",
    "normalize_host",
    "normalize_subdomain",
    "random_subdomain",
]
