"""A yamux multiplexer on asyncio: ``Session`` is a Protocol, ``Stream`` a Transport."""

from .aio import StreamConnection, accept_connection, open_connection
from .config import Config
from .session import Session
from .stream import Stream, StreamState

__all__ = [
    "Config",
    "Session",
    "Stream",
    "StreamState",
    "StreamConnection",
    "accept_connection",
    "open_connection",
]
