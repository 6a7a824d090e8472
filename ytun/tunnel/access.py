"""The access log: one line per public request, upgrade and TCP tunnel connection.

Lines are formatted only when a log is configured (the callers test for ``None`` first)
and written in batches: they are collected and written with one ``write`` at most every
:data:`FLUSH_INTERVAL` seconds or every :data:`FLUSH_LINES` lines, whichever comes first,
so that the log costs the data path one tuple and a list append per request: a request's
line is formatted only when its batch is written (lazily), outside the request's path.

Line format (space-separated, one request per line)::

    2025-06-01T12:00:00Z 203.0.113.7 app.example.com "GET /path?q=1" 200 1234 5.1ms
    2025-06-01T12:00:09Z 203.0.113.7 app.example.com "GET /ws" 101 end 8901.2ms out=4096 in=512
    2025-06-01T12:00:10Z 203.0.113.7 tcp:2222 "- -" - end 3012.0ms out=2871 in=1533

time (UTC, to the second), peer address, host (``tcp:PORT`` for a TCP tunnel), the request
line's method and target, the status, the bytes sent to the public client and the latency
from the request head received to the last byte of the answer sent. An upgrade gets its
``101`` line when protocols switch, then an ``end`` line with how long it lasted and the
bytes each way (``out`` to the public client, ``in`` from it). Control characters, quotes
and backslashes in the target and host are escaped, so one line stays one request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, TextIO

logger = logging.getLogger("ytun.server")

#: Seconds a line may wait before it is written.
FLUSH_INTERVAL = 0.1
#: Lines collected before they are written at once, whatever the time.
FLUSH_LINES = 512

# peer, host, method, target, status, bytes sent, started, done (time.monotonic()).
_RequestFields = tuple[str, bytes, bytes, bytes, int, int, float, float]

_ESCAPES = {i: f"\\x{i:02x}" for i in range(32)} | {
    0x22: '\\"',
    0x5C: "\\\\",
    0x7F: "\\x7f",
}


def _printable(text: str) -> str:
    """``text`` with what could break a line or a field escaped (rarely needed: llhttp
    refuses control characters in a target)."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.translate(_ESCAPES)


def _milliseconds(duration: float) -> str:
    return f"{duration * 1000:.1f}ms"


class AccessLog:
    """A :class:`~ytun.tunnel.observe.RequestObserver`: collects access lines and
    writes them in batches to ``write`` (text in, one newline-terminated line each).

    Use :meth:`to_stream` or :meth:`to_file`; :meth:`close` writes what is left. A failing
    write is reported once (on the ``ytun.server`` logger) and its lines are dropped: the
    log never stops the server.
    """

    def __init__(self, write: Callable[[str], object], flush: Callable[[], object]) -> None:
        self._write = write
        self._flush_target = flush
        # Lines, or for requests the fields of one, formatted when the batch is written.
        self._lines: list[str | _RequestFields] = []
        self._timer: asyncio.TimerHandle | None = None
        self._closed_file: IO[str] | None = None
        self._failed = False
        self._stamp_second = -1
        self._stamp = ""
        #: Other processes write to the same place (``--workers``): write whole lines in
        #: pieces small enough to be written at once (PIPE_BUF), so no line is cut by another.
        self.shared = False

    @classmethod
    def to_stream(cls, stream: TextIO) -> AccessLog:
        """Lines go to ``stream`` (e.g. ``sys.stdout``), flushed after each batch."""
        return cls(stream.write, stream.flush)

    @classmethod
    def to_file(cls, path: str | os.PathLike[str]) -> AccessLog:
        """Lines are appended to the file at ``path`` (created if missing); :meth:`close`
        closes it."""
        file = open(path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        log = cls(file.write, file.flush)
        log._closed_file = file
        return log

    # -- lines -------------------------------------------------------------------------

    def _now(self) -> str:
        return self._stamp_of(int(time.time()))

    def _stamp_of(self, second: int) -> str:
        if second != self._stamp_second:  # one strftime per second, not per line
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._stamp

    def request(
        self,
        peer: str,
        host: bytes,
        method: bytes,
        target: bytes,
        status: int,
        sent: int,
        received: int,
        started: float,
    ) -> None:
        """A request answered (by the origin or by the server); ``started`` is the
        :func:`time.monotonic` when its head was received. ``received`` (the request's
        size) is not on the line."""
        self._add((peer, host, method, target, status, sent, started, time.monotonic()))

    def _request_line(self, fields: _RequestFields, wall_offset: float) -> str:
        peer, host, method, target, status, sent, started, done = fields
        return (
            f"{self._stamp_of(int(done + wall_offset))} {peer} "
            f"{_printable(host.decode('latin-1')) or '-'} "
            f'"{method.decode("latin-1")} {_printable(target.decode("latin-1"))}" '
            f"{status} {sent} {_milliseconds(done - started)}\n"
        )

    def upgrade_end(
        self,
        peer: str,
        host: bytes,
        method: bytes,
        target: bytes,
        status: int,
        sent: int,
        received: int,
        started: float,
    ) -> None:
        """A switched connection (WebSocket, CONNECT) ended."""
        self._add(
            f"{self._now()} {peer} {_printable(host.decode('latin-1')) or '-'} "
            f'"{method.decode("latin-1")} {_printable(target.decode("latin-1"))}" '
            f"{status} end {_milliseconds(time.monotonic() - started)} out={sent} in={received}\n"
        )

    def tcp_end(self, peer: str, port: int, sent: int, received: int, started: float) -> None:
        """A TCP tunnel connection ended."""
        self._add(
            f'{self._now()} {peer} tcp:{port} "- -" - end '
            f"{_milliseconds(time.monotonic() - started)} out={sent} in={received}\n"
        )

    # -- batching ----------------------------------------------------------------------

    def _add(self, line: str | _RequestFields) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test, a shutdown): write at once
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Write the lines collected so far."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        wall_offset = time.time() - time.monotonic()
        lines = [
            line if type(line) is str else self._request_line(line, wall_offset)  # type: ignore[arg-type]
            for line in self._lines
        ]
        self._lines = []
        try:
            for text in _pieces(lines) if self.shared else ("".join(lines),):
                self._write(text)
                self._flush_target()
        except (OSError, ValueError) as exc:  # disk full, a closed pipe or file
            if not self._failed:
                self._failed = True
                logger.warning("cannot write the access log, lines are dropped: %s", exc)

    def close(self) -> None:
        """Write what is left; close the file :meth:`to_file` opened."""
        self.flush()
        file, self._closed_file = self._closed_file, None
        if file is not None:
            file.close()


#: Characters per write when the log is shared: at most 4 bytes each in UTF-8, so a piece
#: stays within PIPE_BUF (4096 bytes on Linux, the POSIX minimum is 512: pieces are atomic
#: on regular files whatever their size).
SHARED_PIECE = 1024


def _pieces(lines: list[str]) -> Iterator[str]:
    """``lines`` joined into pieces of at most :data:`SHARED_PIECE` characters, never
    splitting a line (a longer line is a piece of its own)."""
    piece: list[str] = []
    size = 0
    for line in lines:
        if piece and size + len(line) > SHARED_PIECE:
            yield "".join(piece)
            piece, size = [], 0
        piece.append(line)
        size += len(line)
    if piece:
        yield "".join(piece)


AccessLogSetting = AccessLog | str | os.PathLike[str] | None


def open_access_log(setting: AccessLogSetting) -> AccessLog | None:
    """``None`` or ``"off"``: no log; ``"stdout"``/``"stderr"``: that stream; an
    :class:`AccessLog` as it is; anything else: a file path to append to."""
    if setting is None or isinstance(setting, AccessLog):
        return setting
    if setting == "off":
        return None
    if setting == "stdout":
        return AccessLog.to_stream(sys.stdout)
    if setting == "stderr":
        return AccessLog.to_stream(sys.stderr)
    return AccessLog.to_file(setting)
