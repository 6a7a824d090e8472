"""The process's file-descriptor limit, which bounds how many connections a server holds."""

from __future__ import annotations

import logging

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

logger = logging.getLogger("ytun.server")

#: Descriptors kept free for listeners, logs, origin dials and the interpreter itself.
FD_HEADROOM = 64
#: With no known descriptor limit.
FALLBACK_MAX_CONNECTIONS = 10_000


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns ``(before, after)``.

    A server that runs out of descriptors stops accepting without a word on uvloop (libuv
    closes the connections it cannot take), so it should start with all it may have."""
    if resource is None:
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.debug("could not raise the descriptor limit from %d: %s", soft, exc)
            return (soft, soft)
        return (soft, hard)
    return (soft, soft)


def default_max_connections() -> int:
    """Connections a server may hold at once: the soft descriptor limit, less headroom."""
    if resource is None:
        return FALLBACK_MAX_CONNECTIONS
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return FALLBACK_MAX_CONNECTIONS
    return max(soft - FD_HEADROOM, 1)
