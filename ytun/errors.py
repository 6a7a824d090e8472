"""Exceptions raised by ytun. Both codec implementations raise these same classes."""

from __future__ import annotations

from ._const import GO_AWAY_PROTOCOL_ERROR


class YtunError(Exception):
    """Base class of every ytun error."""


class ProtocolError(YtunError):
    """The peer broke the yamux protocol; ``go_away_code`` is the code to send it."""

    def __init__(self, message: str, go_away_code: int = GO_AWAY_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.go_away_code = go_away_code


class SessionClosedError(YtunError, ConnectionError):
    """The session is closed (locally, by the peer, or because the connection broke)."""


class GoAwayError(SessionClosedError):
    """The peer sent Go Away; ``code`` is its code (0 = normal, 1 = protocol, 2 = internal)."""

    def __init__(self, code: int) -> None:
        names = {0: "normal", 1: "protocol error", 2: "internal error"}
        super().__init__(f"peer sent Go Away ({names.get(code, 'code')} {code})")
        self.code = code


class KeepaliveTimeoutError(SessionClosedError, TimeoutError):
    """The peer did not answer a keepalive ping in time."""


class StreamResetError(YtunError, ConnectionResetError):
    """The stream was reset (RST), by the peer or locally."""


class StreamsExhaustedError(YtunError):
    """No stream IDs are left on this session; open a new connection."""


class StreamLimitError(YtunError):
    """The session already holds its maximum number of concurrent streams."""


class StreamOpenTimeoutError(YtunError, TimeoutError):
    """The peer neither acknowledged nor refused a new stream in time."""


class TunnelError(YtunError):
    """The server refused the tunnel or the handshake failed."""


class RedialAbortedError(TunnelError):
    """The backoff policy gave up reconnecting."""


class IdentifierRefusedError(TunnelError):
    """The server does not know this client's identifier (no host or TCP route uses it)."""
