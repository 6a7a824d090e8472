"""Sending a recorded request to the local service again, recorded as a new exchange.

The request goes out byte for byte as it was first sent (secret header values included:
they are kept in memory for this), to the address the first one reached. Only a request
whose body was captured whole can be replayed, and not a protocol switch.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..errors import ReplayError
from .capture import StreamCapture
from .exchange import Exchange
from .log import ExchangeLog

DEFAULT_REPLAY_TIMEOUT = 30.0
_READ_SIZE = 64 * 1024


def check_replayable(exchange: Exchange) -> tuple[str, int]:
    """The address to send ``exchange`` to again, or :class:`ReplayError` saying why not."""
    if exchange.upgrade:
        raise ReplayError("a request that switches protocols cannot be replayed")
    request = exchange.request
    if not request.complete:
        raise ReplayError("the request never arrived whole")
    if request.truncated:
        raise ReplayError(
            f"the request body ({request.size} bytes) is larger than the capture limit "
            f"({len(request.body)} bytes)"
        )
    address = exchange.local_address
    if not isinstance(address, tuple) or len(address) < 2:
        raise ReplayError("the request never reached a local service")
    return str(address[0]), int(address[1])


async def replay(
    log: ExchangeLog, original: Exchange, timeout: float = DEFAULT_REPLAY_TIMEOUT
) -> Exchange:
    """Send ``original`` again; the new exchange is in ``log`` (marked as its replay) from
    the moment it is sent, and complete (or incomplete, with the reason) on return."""
    host, port = check_replayable(original)
    data = original.request.head + bytes(original.request.body)
    capture = StreamCapture(log, replay_of=original.id)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no answer"
        raise ReplayError(
            f"cannot reach the local service at {host}:{port}: {reason}", 502
        ) from None
    try:
        capture.local_connected(writer.get_extra_info("peername"))
        capture.request_data(data)
        writer.write(data)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_read_answer(reader, capture), timeout)
    except OSError:
        pass  # recorded below as incomplete
    finally:
        capture.stop("the local service did not answer in time")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return capture.exchanges[0]


async def _read_answer(reader: asyncio.StreamReader, capture: StreamCapture) -> None:
    while capture.waiting:
        chunk = await reader.read(_READ_SIZE)
        if not chunk:
            capture.response_eof()
            capture.closed()
            return
        capture.response_data(chunk)
