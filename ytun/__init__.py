"""ytun: a fast HTTP/WebSocket/TCP reverse tunnel over yamux, compatible with koding/tunnel."""

from ._version import __version__
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
from .yamux import Config, Session, Stream, StreamConnection, accept_connection, open_connection

__all__ = ["Config", "GoAwayError", "KeepaliveTimeoutError", "ProtocolError",
           "SessionClosedError", "Session", "Stream", "StreamConnection", "StreamLimitError",
           "StreamOpenTimeoutError", "StreamResetError", "StreamsExhaustedError", "YtunError",
           "__version__", "accept_connection", "open_connection"]
