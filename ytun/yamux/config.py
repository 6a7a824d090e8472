"""Every tunable of a yamux session, with the defaults of hashicorp/yamux where it has one."""

from __future__ import annotations

from dataclasses import dataclass

from .._const import INITIAL_WINDOW, MAX_WINDOW


@dataclass(frozen=True)
class Config:
    """Limits and timers of one :class:`~ytun.yamux.Session`. Times are in seconds."""

    #: Inbound streams waiting for ``accept_stream``; beyond it new streams get RST.
    accept_backlog: int = 256
    #: Concurrent streams, both directions; inbound beyond it get RST, outbound raise.
    max_streams: int = 16384
    #: Outbound streams not yet acknowledged by the peer; further opens wait.
    max_unacked_streams: int = 256
    #: Receive window per stream (advertised additively above the implicit 256 KiB).
    recv_window: int = INITIAL_WINDOW
    #: Largest Data payload we send in one frame (rust-yamux rejects more than 1 MiB).
    max_frame_payload: int = 64 * 1024
    #: Largest Data payload we accept in one frame; more is a protocol error.
    max_recv_payload: int = 16 * 1024 * 1024
    #: Ping an idle peer this often (None: never).
    keepalive_interval: float | None = 30.0
    #: How long a ping (keepalive or ``Session.ping``) may take before it fails.
    ping_timeout: float = 10.0
    #: An opened stream must be acknowledged within this time or it is reset (None: wait).
    stream_open_timeout: float | None = 75.0
    #: After ``close()``, the peer must close its side within this time or we reset.
    stream_close_timeout: float | None = 300.0
    #: Per-stream buffer of unsent data above which the attached protocol is paused.
    stream_write_high: int = 256 * 1024
    #: ...and below which it is resumed.
    stream_write_low: int = 64 * 1024
    #: Write-buffer high-water mark set on the session's TCP/TLS transport.
    transport_write_high: int = 4 * 1024 * 1024
    #: Pongs that may be queued at once; ping replies beyond it are dropped.
    pong_backlog: int = 64
    #: Bytes of control frames (ACK, RST, window updates, pongs) held for a peer that does
    #: not read. At half of it the session stops reading that peer; past it the session
    #: sends Go Away (internal error) and drops the connection. Honest traffic stays far
    #: below: about two window updates per stream, one ACK per new stream, the pongs.
    max_control_queue: int = 1024 * 1024
    #: Frames parsed before the session lets the event loop go round; the rest of the
    #: read waits for the next turn. A flood of tiny frames (SYN+RST) costs a few µs
    #: each: unbounded, one 256 KiB read held the loop for ~75 ms.
    frame_budget: int = 1024

    def __post_init__(self) -> None:
        positive = (
            "accept_backlog",
            "max_streams",
            "max_unacked_streams",
            "max_frame_payload",
            "max_recv_payload",
            "ping_timeout",
            "stream_write_high",
            "transport_write_high",
            "pong_backlog",
            "max_control_queue",
            "frame_budget",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not INITIAL_WINDOW <= self.recv_window <= MAX_WINDOW:
            raise ValueError(f"recv_window must be within {INITIAL_WINDOW}..{MAX_WINDOW}")
        if self.max_frame_payload > 1024 * 1024:
            raise ValueError("max_frame_payload above 1 MiB breaks rust-yamux peers")
        if not 0 <= self.stream_write_low <= self.stream_write_high:
            raise ValueError("stream_write_low must be within 0..stream_write_high")
        for name in ("keepalive_interval", "stream_open_timeout", "stream_close_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None")
