"""The koding/tunnel-compatible tunnel on top of :mod:`ytun.yamux`: server, client, routes."""

from .client import Client, ClientState, ClientStateChange, ExponentialBackoff
from .server import ClientInfo, Server, ServerState, ServerStateChange

__all__ = [
    "Client",
    "ClientInfo",
    "ClientState",
    "ClientStateChange",
    "ExponentialBackoff",
    "Server",
    "ServerState",
    "ServerStateChange",
]
