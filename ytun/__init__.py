"""ytun: a fast HTTP/WebSocket/TCP reverse tunnel over yamux, compatible with koding/tunnel.

The tunnel is here; the multiplexer it runs on (``Session``, ``Stream``, ``Config``) is
:mod:`ytun.yamux`.
"""

from ._version import __version__
from .errors import (
    GoAwayError,
    IdentifierRefusedError,
    KeepaliveTimeoutError,
    ProtocolError,
    RedialAbortedError,
    SessionClosedError,
    StreamLimitError,
    StreamOpenTimeoutError,
    StreamResetError,
    StreamsExhaustedError,
    TunnelError,
    YtunError,
)
from .tunnel import (
    Client,
    ClientInfo,
    ClientState,
    ClientStateChange,
    ExponentialBackoff,
    MemoryRegistry,
    Registry,
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
    "IdentifierRefusedError",
    "KeepaliveTimeoutError",
    "MemoryRegistry",
    "ProtocolError",
    "RedialAbortedError",
    "Registry",
    "Server",
    "ServerState",
    "ServerStateChange",
    "SessionClosedError",
    "StreamLimitError",
    "StreamOpenTimeoutError",
    "StreamResetError",
    "StreamsExhaustedError",
    "TunnelError",
    "YtunError",
    "__version__",
]
