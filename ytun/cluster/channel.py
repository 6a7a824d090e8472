"""The supervising parent and a worker talk over one Unix stream socket: a JSON object
per line. Only small control messages cross it (claims, announcements); never traffic."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("ytun.cluster")

Message = dict[str, Any]

#: A line longer than this is a broken peer, not a message.
MAX_LINE = 64 * 1024


class Channel:
    """One end of a parent-worker socket: :meth:`send` queues a message, every message
    received goes to ``on_message``, and ``on_close`` runs once when the other end is
    gone."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[Message], None],
        on_close: Callable[[], None],
    ) -> None:
        self._sock = sock
        self._on_message = on_message
        self._on_close = on_close
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self.closed = False

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=MAX_LINE)
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    def send(self, message: Message) -> None:
        if self._writer is not None and not self.closed:
            self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    break  # end of file
                try:
                    message = json.loads(line)
                except ValueError:
                    logger.error("unreadable message between worker and parent; closing")
                    break
                if isinstance(message, dict):
                    try:
                        self._on_message(message)
                    except (KeyError, TypeError, ValueError) as exc:
                        logger.error("a malformed message between worker and parent: %r", exc)
        except ConnectionError:
            pass  # the other end stopped: the same as an end of file
        except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
            logger.error("the worker channel failed: %s", exc)
        finally:
            self._closed()

    def _closed(self) -> None:
        if not self.closed:
            self.closed = True
            if self._writer is not None:
                self._writer.close()
            self._on_close()

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        self._closed()
