"""ytun: a fast HTTP/WebSocket/TCP reverse tunnel over yamux, compatible with koding/tunnel.

The tunnel is here; the multiplexer it runs on (``Session``, ``Stream``, ``Config``) is
:mod:`ytun.yamux`.
"""

from ._version import __version__
from .errors import (
    GoAwayError,
    HostTakenError,
    IdentifierRefusedError,
    InvalidHostError,
    KeepaliveTimeoutError,
    PeerNotReadingError,
    ProtocolError,
    RedialAbortedError,
    RegistryError,
    SessionClosedError,
    StreamLimitError,
    StreamOpenTimeoutError,
    StreamResetError,
    StreamsExhaustedError,
    TunnelError,
    TunnelLoopError,
    YtunError,
)
from .registry import MemoryRegistry, Registry, Route, SqliteRegistry
from .tunnel import (
    Client,
    ClientInfo,
    ClientState,
    ClientStateChange,
    ExponentialBackoff,
    Server,
    ServerState,
    ServerStateChange,
)

__all__ = [
    "Client",
    "ClientInfo",
    "ClientState",
    "ClientStateChange",
    "ExponentialBackoff",
    "GoAwayError",
    "HostTakenError",
    "IdentifierRefusedError",
    "InvalidHostError",
    "KeepaliveTimeoutError",
    "PeerNotReadingError",
    "MemoryRegistry",
    "ProtocolError",
    "RedialAbortedError",
    "Registry",
    "RegistryError",
    "Route",
    "Server",
    "ServerState",
    "ServerStateChange",
    "SessionClosedError",
    "SqliteRegistry",
    "StreamLimitError",
    "StreamOpenTimeoutError",
    "StreamResetError",
    "StreamsExhaustedError",
    "TunnelError",
    "TunnelLoopError",
    "YtunError",
    "__version__",
]
