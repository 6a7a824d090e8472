"""A TLS listener that looks at each connection's first byte before the handshake.

A TLS connection starts with a handshake record (0x16); anything else is a client that
speaks plain HTTP to a TLS port. asyncio's own TLS listener drops those silently; this
one answers them in plain text and says so in the log, once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable

from .http1 import error_response
from .splice import AnswerAndClose

logger = logging.getLogger("ytun.server")

_TLS_HANDSHAKE_RECORD = 0x16
#: accept() errors that mean "out of resources now", not "this connection failed".
_ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

PLAIN_ON_TLS_ANSWER = error_response(
    400, "this port speaks TLS: use https:// (the request was sent in plain text)", close=True
)


class TlsListener(asyncio.AbstractServer):
    """Accepts on ``sock``; TLS connections get ``protocol_factory`` behind ``context``,
    plain ones a 400 answer. Waits at most ``first_byte_timeout`` for the first byte."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        context: ssl_module.SSLContext,
        *,
        first_byte_timeout: float = 10.0,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._factory = protocol_factory
        self._context = context
        self._first_byte_timeout = first_byte_timeout
        self._waiting: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}
        self._plain_logged = False
        self._exhausted_logged = False
        sock.setblocking(False)
        self._accepting = self._loop.create_task(self._accept_forever())
        self._closed = self._loop.create_future()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._sock.fileno() < 0 else (self._sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._accepting.done()

    async def start_serving(self) -> None:
        pass  # serving from the start

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)

    def close(self) -> None:
        if self._closed.done():
            return
        self._accepting.cancel()
        for fd, (conn, timer) in list(self._waiting.items()):
            self._loop.remove_reader(fd)
            timer.cancel()
            conn.close()
        self._waiting.clear()
        self._sock.close()
        self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)
        try:
            await self._accepting
        except asyncio.CancelledError:
            pass

    async def _accept_forever(self) -> None:
        while True:
            try:
                conn, _ = await self._loop.sock_accept(self._sock)
            except OSError as exc:
                if exc.errno not in _ACCEPT_EXHAUSTED:
                    continue  # that connection failed (reset before accept): the next one
                if not self._exhausted_logged:
                    self._exhausted_logged = True
                    logger.error("cannot accept connections: %s (raise ulimit -n)", exc.strerror)
                await asyncio.sleep(0.1)
                continue
            self._exhausted_logged = False
            conn.setblocking(False)
            fd = conn.fileno()
            timer = self._loop.call_later(self._first_byte_timeout, self._give_up, fd)
            self._waiting[fd] = (conn, timer)
            self._loop.add_reader(fd, self._first_byte, fd)

    def _give_up(self, fd: int) -> None:
        waiting = self._waiting.pop(fd, None)
        if waiting is not None:
            self._loop.remove_reader(fd)
            waiting[0].close()

    def _first_byte(self, fd: int) -> None:
        conn, timer = self._waiting[fd]
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        del self._waiting[fd]
        self._loop.remove_reader(fd)
        timer.cancel()
        if not first:
            conn.close()
            return
        if first[0] == _TLS_HANDSHAKE_RECORD:
            connecting = self._loop.create_task(
                self._loop.connect_accepted_socket(self._factory, conn, ssl=self._context)
            )
        else:
            if not self._plain_logged:
                self._plain_logged = True
                peer = conn.getpeername()
                logger.warning(
                    "a plain-HTTP request reached the TLS port (from %s); such clients get "
                    "a 400 answer (logged once)",
                    peer[0] if isinstance(peer, tuple) else peer,
                )
            connecting = self._loop.create_task(
                self._loop.connect_accepted_socket(
                    lambda: AnswerAndClose(PLAIN_ON_TLS_ANSWER), conn
                )
            )
        connecting.add_done_callback(_handshake_done)


def _handshake_done(task: asyncio.Task[object]) -> None:
    # A failed handshake (a scanner, a client that does not trust the certificate) is
    # the client's problem, not ours: nothing to log above debug.
    if not task.cancelled() and task.exception() is not None:
        logger.debug("TLS handshake failed: %s", task.exception())
