"""Moving a connection between worker processes: its socket as a file descriptor, with
the bytes already read from it, over a Unix SOCK_SEQPACKET socket.

The socket is passed with SCM_RIGHTS (``socket.send_fds``), so the connection itself never
passes through another process and its traffic is never copied between processes; only
the bytes the first worker had already read (a request head, maybe part of a body) travel
with it. One hand-off is a header message carrying the descriptor and the first bytes, then
as many continuation messages as the remaining bytes need, all on one sender's connection,
so they cannot interleave with another sender's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable

from ..tunnel.peers import ConnectionKind

logger = logging.getLogger("ytun.cluster")

_HEADER = struct.Struct("!cBI")  # b"H", kind, bytes that follow in all
_MORE = b"D"
_KINDS: tuple[ConnectionKind, ...] = ("http", "tcp")
#: Bytes per message: well under the smallest default socket buffer.
CHUNK = 60 * 1024
#: A connection's bytes read before it moved: a head and one read of body at most.
MAX_CARRIED = 4 * 1024 * 1024
#: Hand-offs queued towards one worker that is slow to take them; more are refused.
MAX_QUEUED = 1024

Adopt = Callable[[socket.socket, ConnectionKind, bytes], None]


def socket_path(directory: str, node: str) -> str:
    return os.path.join(directory, f"worker-{node}.sock")


class HandOffSender:
    """Hands connections to the other workers, one SOCK_SEQPACKET connection to each."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._peers: dict[str, _PeerLink] = {}
        self.sent = 0  # connections handed over, for the logs and tests

    def send(
        self, node: str, kind: ConnectionKind, transport: asyncio.BaseTransport, data: bytes
    ) -> bool:
        """Queue the connection of ``transport`` for ``node``; False if it cannot go."""
        if len(data) > MAX_CARRIED:
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        first = _HEADER.pack(b"H", _KINDS.index(kind), len(data)) + data[:CHUNK]
        messages = [first] + [_MORE + data[i : i + CHUNK] for i in range(CHUNK, len(data), CHUNK)]
        # Twice at most: a connection made to a worker before it restarted fails once.
        for _ in range(2):
            link = self._peers.get(node)
            if link is None or link.broken:
                link = self._peers[node] = _PeerLink(socket_path(self._directory, node))
            if not link.connect():
                return False
            if len(link.queue) > MAX_QUEUED:
                logger.warning("worker %s is not taking connections; answering here", node)
                return False
            link.queue.append((messages[0], os.dup(sock.fileno())))
            link.queue.extend((message, -1) for message in messages[1:])
            link.flush()
            if not link.broken:
                break
        else:
            return False
        self.sent += 1
        logger.debug(
            "handed a%s connection to worker %s", " TCP" if kind == "tcp" else "n HTTP", node
        )
        return True

    def close(self) -> None:
        for link in self._peers.values():
            link.close()
        self._peers.clear()


class _PeerLink:
    """The connection to one worker's hand-off socket and what waits to go on it."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._sock: socket.socket | None = None
        self._writing = False
        self.broken = False
        self.queue: deque[tuple[bytes, int]] = deque()  # message, descriptor or -1

    def connect(self) -> bool:
        if self._sock is not None:
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            sock.connect(self._path)
        except OSError as exc:  # not listening (restarting, or stopped)
            logger.debug("cannot reach %s: %s", self._path, exc.strerror or exc)
            sock.close()
            return False
        self._sock = sock
        return True

    def flush(self) -> None:
        sock = self._sock
        if sock is None:
            return
        queue = self.queue
        try:
            while queue:
                message, fd = queue[0]
                if fd >= 0:
                    socket.send_fds(sock, [message], [fd])
                    os.close(fd)
                else:
                    sock.send(message)
                queue.popleft()
        except (BlockingIOError, InterruptedError):
            if not self._writing:
                self._writing = True
                asyncio.get_running_loop().add_writer(sock.fileno(), self._writable)
            return
        except OSError as exc:  # the worker went away: what was queued for it is lost
            logger.warning("a worker stopped taking connections: %s", exc.strerror or exc)
            self.close()
            return
        if self._writing:
            self._writing = False
            asyncio.get_running_loop().remove_writer(sock.fileno())

    def _writable(self) -> None:
        self.flush()

    def close(self) -> None:
        self.broken = True
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._writing:
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().remove_writer(sock.fileno())
            sock.close()
        for _, fd in self.queue:
            if fd >= 0:
                os.close(fd)
        self.queue.clear()


class HandOffReceiver:
    """Listens on this worker's hand-off socket and gives each connection that arrives,
    with its bytes, to ``adopt``."""

    def __init__(self, directory: str, node: str, adopt: Adopt) -> None:
        self._path = socket_path(directory, node)
        self._adopt = adopt
        self._listener: socket.socket | None = None
        self._connections: dict[int, _Incoming] = {}
        self.adopted = 0

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)  # left by this worker's previous life
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self._path)
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.error("hand-off socket: %s", exc.strerror or exc)
                return
            sock.setblocking(False)
            incoming = _Incoming(sock, self._adopted, self._dropped)
            self._connections[sock.fileno()] = incoming
            asyncio.get_running_loop().add_reader(sock.fileno(), incoming.readable)

    def _adopted(self, conn: socket.socket, kind: ConnectionKind, data: bytes) -> None:
        self.adopted += 1
        logger.debug("adopted a%s connection", " TCP" if kind == "tcp" else "n HTTP")
        try:
            self._adopt(conn, kind, data)
        except Exception:  # never into the loop: the connection is dropped, we go on
            logger.exception("could not serve a handed-over connection")
            conn.close()

    def _dropped(self, incoming: _Incoming) -> None:
        self._connections.pop(incoming.fileno, None)

    def close(self) -> None:
        """Take no more connections (those already adopted carry on)."""
        listener, self._listener = self._listener, None
        loop = asyncio.get_running_loop()
        if listener is not None:
            loop.remove_reader(listener.fileno())
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
        for incoming in list(self._connections.values()):
            incoming.close()
        self._connections.clear()


class _Incoming:
    """One sender's connection: messages put back together into hand-offs."""

    def __init__(
        self,
        sock: socket.socket,
        on_connection: Adopt,
        on_gone: Callable[[_Incoming], None],
    ) -> None:
        self._sock = sock
        self.fileno = sock.fileno()
        self._on_connection = on_connection
        self._on_gone = on_gone
        self._fd = -1  # the descriptor of the hand-off being put together
        self._kind: ConnectionKind = "http"
        self._wanted = 0
        self._parts: list[bytes] = []
        self._closed = False

    def readable(self) -> None:
        while not self._closed:
            try:
                message, fds, flags, _ = socket.recv_fds(self._sock, CHUNK + _HEADER.size, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("hand-off connection failed: %s", exc.strerror or exc)
                self.close()
                return
            if not message and not fds:
                self.close()  # the sender is gone
                return
            try:
                self._message(message, fds, flags)
            except ValueError as exc:
                for fd in fds:
                    _close_fd(fd)
                logger.error("bad hand-off message (%s); dropping that sender", exc)
                self.close()
                return

    def _message(self, message: bytes, fds: list[int], flags: int) -> None:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise ValueError("truncated")
        if message[:1] == b"H":
            if self._fd >= 0 or len(fds) != 1 or len(message) < _HEADER.size:
                raise ValueError("unexpected header")
            _, kind, wanted = _HEADER.unpack_from(message)
            if kind >= len(_KINDS) or wanted > MAX_CARRIED:
                raise ValueError("unknown kind or too many bytes")
            self._fd, self._kind, self._wanted = fds[0], _KINDS[kind], wanted
            self._parts = [message[_HEADER.size :]]
        elif message[:1] == _MORE and self._fd >= 0 and not fds:
            self._parts.append(message[1:])
        else:
            raise ValueError("unexpected message")
        have = sum(len(part) for part in self._parts)
        if have > self._wanted:
            raise ValueError("more bytes than announced")
        if have == self._wanted:
            fd, self._fd = self._fd, -1
            data, self._parts = b"".join(self._parts), []
            try:
                conn = socket.socket(fileno=fd)
            except OSError:
                _close_fd(fd)
                return
            conn.setblocking(False)
            self._on_connection(conn, self._kind, data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_reader(self.fileno)
        self._sock.close()
        if self._fd >= 0:
            _close_fd(self._fd)
            self._fd = -1
        self._on_gone(self)


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


__all__ = ["CHUNK", "HandOffReceiver", "HandOffSender", "socket_path"]
