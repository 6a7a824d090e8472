"""The supervising parent of ``ytun server --workers N``.

It starts N copies of the same command as worker processes, keeps the table of which
worker holds which client (:class:`~ytun.cluster.ownership.OwnershipTable`) and tells every
worker each change, restarts a worker that dies (with a growing delay), and passes SIGHUP
(reload), SIGINT and SIGTERM (drain; a second one stops at once) on to all of them. It
never touches traffic: the workers accept, hand connections to each other and serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .channel import Channel, Message
from .ownership import OwnershipTable
from .worker import WORKER_VARIABLE, WorkerSettings

logger = logging.getLogger("ytun.cluster")

#: Restart delays: the first, the longest, and how long a worker must have run for the
#: next restart to start from the first again.
RESTART_FIRST = 0.1
RESTART_MAX = 5.0
RESTART_RESET_AFTER = 10.0
#: Beyond the workers' grace period, how long the parent waits before it kills them.
KILL_AFTER = 5.0
#: The directory ytun is imported from.
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class _Slot:
    """One worker position: the process currently in it and its channel."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.ready = asyncio.Event()
        self.starts = 0


class Supervisor:
    """Run ``command`` (arguments of ``python -m ytun``) as ``workers`` processes."""

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        *,
        port: int,
        via_mark: str,
        grace: float,
        on_ready: Callable[[], None] = lambda: None,
        listeners: Sequence[socket.socket] = (),
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.command = list(command)
        self.port = port
        self.via_mark = via_mark
        # One salt for every worker's registry, so they agree on client keys.
        self.salt = secrets.token_hex(32)
        self.grace = grace
        self._on_ready = on_ready
        #: Listening sockets every worker inherits and accepts on (empty: SO_REUSEPORT).
        self._listen_fds = tuple(sock.fileno() for sock in listeners)
        self._slots = [_Slot(str(index)) for index in range(workers)]
        self._table = OwnershipTable()
        self._directory = ""
        self._stopping = asyncio.Event()
        self._signal = 0
        self._signals = 0
        self.restarts = 0

    # -- running -------------------------------------------------------------------------

    async def run(self) -> int:
        """Start the workers, supervise them until told to stop, return the exit status."""
        self._directory = tempfile.mkdtemp(prefix="ytun-workers-")  # mode 0700: ours only
        self._install_signals()
        keepers = [asyncio.ensure_future(self._keep_running(slot)) for slot in self._slots]
        try:
            failed = await self._all_ready(keepers)
            if failed is not None:
                self._stop(signal.SIGTERM)
                await asyncio.gather(*keepers, return_exceptions=True)
                return failed
            self._on_ready()
            await self._stopping.wait()
            await self._drain(keepers)
        finally:
            for keeper in keepers:
                keeper.cancel()
            shutil.rmtree(self._directory, ignore_errors=True)
        return 128 + self._signal if self._signals > 1 else 0

    async def _all_ready(self, keepers: list[asyncio.Task[int | None]]) -> int | None:
        """None once every worker is ready; the exit status of one that ended first."""
        readies: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(slot.ready.wait()) for slot in self._slots
        ]
        pending: set[asyncio.Future[Any]] = {*readies, *keepers}
        try:
            while not all(ready.done() for ready in readies):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    if future in keepers:
                        if self._stopping.is_set():
                            return 0  # told to stop while starting
                        status: int | None = future.result()
                        return status if status else 1
                if self._stopping.is_set():
                    return 0
        finally:
            for ready in readies:
                ready.cancel()
        return None

    async def _drain(self, keepers: list[asyncio.Task[int | None]]) -> None:
        try:
            await asyncio.wait_for(
                asyncio.gather(*keepers, return_exceptions=True), self.grace + KILL_AFTER
            )
        except asyncio.TimeoutError:
            logger.error(
                "workers still running %g s after the grace period; killing them", KILL_AFTER
            )
            for slot in self._slots:
                if slot.process is not None and slot.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        slot.process.kill()
            await asyncio.gather(*keepers, return_exceptions=True)

    async def _keep_running(self, slot: _Slot) -> int | None:
        """Run the slot's worker, again and again until stopping. Returns the exit
        status of a worker that ended before it was ready (at start), else None."""
        delay = RESTART_FIRST
        while not self._stopping.is_set():
            started = time.monotonic()
            process = await self._spawn(slot)
            status = await process.wait()
            self._forget(slot)
            if self._stopping.is_set():
                return None
            if not slot.ready.is_set() and slot.starts == 1:
                return status  # it could not start: neither will the next one
            self.restarts += 1
            if time.monotonic() - started > RESTART_RESET_AFTER:
                delay = RESTART_FIRST
            logger.error(
                "worker %s ended (%s); starting it again in %.1f s",
                slot.node,
                _describe(status),
                delay,
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RESTART_MAX)
        return None

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        ours, theirs = socket.socketpair()
        slot.starts += 1
        settings = WorkerSettings(
            node=slot.node,
            channel_fd=theirs.fileno(),
            directory=self._directory,
            via_mark=self.via_mark,
            port=self.port,
            salt=self.salt,
            listen_fds=self._listen_fds,
        )
        environ = dict(os.environ)
        environ[WORKER_VARIABLE] = settings.to_environ()
        # The workers import the same ytun as this process, wherever it comes from.
        environ["PYTHONPATH"] = os.pathsep.join(
            [_PACKAGE_PARENT, *filter(None, [environ.get("PYTHONPATH")])]
        )
        try:
            slot.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ytun",
                *self.command,
                env=environ,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), *self._listen_fds),
            )
        finally:
            theirs.close()
        slot.channel = Channel(
            ours, lambda message: self._received(slot, message), lambda: self._forget(slot)
        )
        await slot.channel.start()
        for key, node in self._table.items():  # what it must know before it serves
            slot.channel.send({"t": "holder", "key": key, "node": node})
        logger.info("worker %s started (pid %d)", slot.node, slot.process.pid)
        return slot.process

    # -- the ownership table -------------------------------------------------------------

    def _received(self, slot: _Slot, message: Message) -> None:
        kind = message.get("t")
        channel = slot.channel
        if channel is None:
            return
        if kind == "ready":
            slot.ready.set()
        elif kind == "claim":
            key = str(message["key"])
            holder = self._table.claim(key, slot.node)
            channel.send({"t": "claimed", "n": message["n"], "key": key, "ok": holder == slot.node})
            if holder == slot.node:
                self._announce(key, slot.node)
        elif kind == "release":
            key = str(message["key"])
            if self._table.release(key, slot.node):
                self._announce(key, None)

    def _forget(self, slot: _Slot) -> None:
        """The slot's worker is gone: the clients it held are held by nobody."""
        channel, slot.channel = slot.channel, None
        if channel is not None:
            channel.close()
        for key in self._table.drop(slot.node):
            self._announce(key, None)

    def _announce(self, key: str, node: str | None) -> None:
        message = {"t": "holder", "key": key, "node": node}
        for slot in self._slots:
            if slot.channel is not None:
                slot.channel.send(message)

    # -- signals -------------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)

    def _stop(self, sig: int) -> None:
        self._signal = sig
        self._signals += 1
        self._stopping.set()
        self._forward(signal.SIGTERM)  # a second one: the workers stop at once

    def _forward(self, sig: int) -> None:
        for slot in self._slots:
            process = slot.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"status {status}"
