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


class PeerNotReadingError(YtunError):
    """The peer stopped reading while its frames kept asking for replies; the session
    sent Go Away and dropped the connection rather than buffer the replies without end."""


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


class TunnelLoopError(TunnelError):
    """The local address a stream would be sent to is the tunnel server itself."""


class RegistryError(YtunError):
    """The registry's stored state cannot be used: corrupt, unreadable, unwritable, or
    written by a newer ytun. The message names the file and the reason."""


class InvalidHostError(YtunError, ValueError):
    """A host name that cannot be routed; the message says why (never echoes a secret)."""


class HostTakenError(YtunError):
    """The host already belongs to another client and replacing it was not asked for."""


class AdminError(YtunError):
    """The admin API refused a request (``status`` is its HTTP status and the message its
    reason), or gave no usable answer (``status`` 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AdminUnreachableError(AdminError):
    """No connection to the admin API (wrong address, server down, TLS failure)."""


class UnsafeAdminListenerError(YtunError, ValueError):
    """The admin API would listen beyond this machine without a token to guard it."""


class InspectorError(YtunError):
    """The request inspector cannot do what was asked; the message says why."""


class ReplayError(InspectorError):
    """A recorded request cannot be sent again (its body was cut at the cap, it switched
    protocols, or the local service did not answer); ``status`` is the HTTP status the
    inspector's API answers with."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status
