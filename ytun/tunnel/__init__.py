"""The koding/tunnel-compatible tunnel on top of :mod:`ytun.yamux`: server, client, routes."""

from .client import Client, ClientState, ClientStateChange, ExponentialBackoff
from .registry import MemoryRegistry, Registry
from .server import ClientInfo, Server, ServerState, ServerStateChange

__all__ = [
    "Client",
    "ClientInfo",
    "ClientState",
    "ClientStateChange",
    "ExponentialBackoff",
    "MemoryRegistry",
    "Registry",
    "Server",
    "ServerState",
    "ServerStateChange",
]
