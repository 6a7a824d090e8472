"""The request inspector: records what goes through a client and serves it on a page.

``Inspector`` is what a :class:`ytun.Client` takes as ``inspector=``: it gives each HTTP or
WebSocket stream a :class:`StreamCapture`, keeps the exchanges in an :class:`ExchangeLog`,
and serves the page, the JSON API and the live feed with :meth:`start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..control.web import serve
from ..errors import InspectorError
from ..tunnel.tap import StreamObserver
from .app import make_router
from .capture import StreamCapture
from .exchange import Exchange
from .log import DEFAULT_BODY_LIMIT, DEFAULT_MAX_ENTRIES, ExchangeLog
from .replay import DEFAULT_REPLAY_TIMEOUT, replay
from .where import is_loopback_host

logger = logging.getLogger("ytun.inspector")

#: Seconds :meth:`Inspector.close` waits for its listener to close.
CLOSE_WAIT = 1.0


class Inspector:
    """Records the last ``max_requests`` exchanges (``body_limit`` bytes of each body)."""

    def __init__(
        self,
        max_requests: int = DEFAULT_MAX_ENTRIES,
        body_limit: int = DEFAULT_BODY_LIMIT,
        *,
        replay_timeout: float = DEFAULT_REPLAY_TIMEOUT,
    ) -> None:
        self.log = ExchangeLog(max_requests, body_limit)
        self.replay_timeout = replay_timeout
        self._server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None

    # -- recording (ytun.tunnel.tap.StreamTaps) ---------------------------------------------

    def observe(self, protocol: int, local_port: int) -> StreamObserver | None:
        return StreamCapture(self.log)

    async def replay(self, exchange_id: int) -> Exchange:
        """Send a recorded request again; :class:`ReplayError` says why it cannot be."""
        original = self.log.get(exchange_id)
        if original is None:
            raise KeyError(exchange_id)
        return await replay(self.log, original, self.replay_timeout)

    # -- the page ---------------------------------------------------------------------------

    async def start(self, host: str, port: int, *, allow_remote: bool = False) -> tuple[str, int]:
        """Serve the page and the API on ``host:port`` (port 0: any free one); returns the
        address. An address other than loopback needs ``allow_remote``: the page shows
        request bodies and can send requests to the local service."""
        if self._server is not None:
            raise InspectorError("the inspector is already serving")
        loopback = is_loopback_host(host)
        if not loopback and not allow_remote:
            raise InspectorError(
                f"the inspector address {host or '*'}:{port} is reachable from other machines; "
                "use a loopback address, or allow it explicitly (--inspect-allow-remote)"
            )
        if not loopback:
            logger.warning(
                "the inspector on %s:%d is reachable from other machines: anyone who reaches "
                "it sees request bodies and can replay requests to the local service",
                host or "*",
                port,
            )
        router = make_router(self, check_host=loopback)
        try:
            self._server = await serve(router, host or None, port)  # type: ignore[arg-type]
        except OSError as exc:
            raise InspectorError(
                f"cannot serve the inspector on {host or '*'}:{port}: {exc.strerror or exc}"
            ) from None
        bound = self._server.sockets[0].getsockname()  # type: ignore[attr-defined]
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    @property
    def url(self) -> str:
        if self.address is None:
            raise InspectorError("the inspector is not serving")
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    async def close(self) -> None:
        """Stop serving; open live feeds end."""
        self.log.close()
        server, self._server = self._server, None
        if server is not None:
            server.close()
            close_clients = getattr(server, "close_clients", None)  # Python 3.13+
            if close_clients is not None:
                close_clients()
            # From Python 3.12 on, wait_closed also waits for open keep-alive connections
            # (a page left open): those end at their idle timeout, so do not wait for them.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), CLOSE_WAIT)

    def __repr__(self) -> str:
        stats: dict[str, Any] = self.log.stats()
        return f"Inspector(address={self.address}, {stats})"
