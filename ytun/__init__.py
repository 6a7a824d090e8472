"""ytun: a fast HTTP/WebSocket/TCP reverse tunnel over yamux, compatible with koding/tunnel."""

from ._version import __version__
from .client import Client, ClientState, ClientStateChange, ExponentialBackoff
from .errors import (
    GoAwayError,
    KeepaliveTimeoutError,
    ProtocolError,
    SessionClosedError,
    StreamLimitError,
    StreamOpenTimeoutError,
    StreamResetError,
    StreamsExhaustedError,
    YtunError,
)
from .server import Server, ServerState, ServerStateChange
from .yamux import (
    Config,
    Session,
    Stream,
    StreamConnection,
    accept_connection,
    open_connection,
)

__all__ = [
    "Client",
    "ClientState",
    "ClientStateChange",
    "Config",
    "ExponentialBackoff",
    "GoAwayError",
    "KeepaliveTimeoutError",
    "ProtocolError",
    "Server",
    "ServerState",
    "ServerStateChange",
    "Session",
    "SessionClosedError",
    "Stream",
    "StreamConnection",
    "StreamLimitError",
    "StreamOpenTimeoutError",
    "StreamResetError",
    "StreamsExhaustedError",
    "YtunError",
    "__version__",
    "accept_connection",
    "open_connection",
]
