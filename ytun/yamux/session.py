"""The yamux session: an asyncio Protocol on one TCP/TLS connection carrying many streams.

The protocol state lives in :class:`~ytun.yamux.core.Multiplexer`; this module gives it a
transport, timers and futures. Incoming bytes go straight to the core's frame parser
(compiled), which calls back once per frame. Outgoing frames queued during one loop
iteration leave in one ``writelines``: control frames (ACK, RST, window updates, pings,
Go Away) first, then stream data.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

from .._const import GO_AWAY_INTERNAL_ERROR, GO_AWAY_NORMAL
from ..errors import (
    GoAwayError,
    KeepaliveTimeoutError,
    PeerNotReadingError,
    ProtocolError,
    SessionClosedError,
)
from . import codec as default_codec
from .config import Config
from .core import Multiplexer
from .stream import Stream

logger = logging.getLogger("ytun.yamux")

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

# asyncio's writelines() skipped the write-buffer limits (so pause_writing never came) in
# CPython 3.12.0-3.12.8 and 3.13.0-3.13.1 (GHSA-fw89-6wjj-8j95); join instead there.
_WRITELINES_CHECKS_LIMITS = not (
    (3, 12) <= sys.version_info[:3] < (3, 12, 9) or (3, 13) <= sys.version_info[:3] < (3, 13, 2)
)


#: Bytes one session parses before it lets the loop go round (one uvloop read is 256 KiB).
_READ_BUDGET = 256 * 1024


class Session(asyncio.Protocol):
    """One end of a yamux connection.

    ``client=True`` opens odd stream IDs, ``client=False`` even ones. Inbound streams get
    a protocol from ``protocol_factory`` at once (like ``loop.create_server``), or wait in
    a bounded backlog for :meth:`accept_stream` when no factory is given.
    ``on_remote_go_away()`` is called when the peer announces it takes no new streams.
    ``codec`` is the frame-codec module (compiled or pure Python); the default is the one
    :mod:`ytun.yamux.codec` selected.
    """

    def __init__(
        self,
        *,
        client: bool,
        config: Config | None = None,
        protocol_factory: ProtocolFactory | None = None,
        on_remote_go_away: Callable[[], None] | None = None,
        codec: ModuleType | None = None,
    ) -> None:
        self.config = config = config or Config()
        self.client = client
        self.codec = codec = codec or default_codec.implementation
        self._loop = asyncio.get_running_loop()
        self._protocol_factory = protocol_factory
        self._on_remote_go_away = on_remote_go_away
        self._mux = Multiplexer(
            client=client,
            config=config,
            codec=codec,
            hooks=_Hooks(self, self._loop),
            backlog=protocol_factory is None,
        )
        self._transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self._writing_paused = False
        # We stopped reading a peer that does not read our replies (see _output_held).
        self._reading_paused = False
        self._control_pause = config.max_control_queue // 2
        # Input parsed since reading last yielded to the loop (see data_received).
        self._fed = 0
        self._yielding = False
        # The rest of a read the frame budget left for the next loop turn.
        self._unparsed: memoryview | None = None
        # Callers waiting for an inbound stream, and for a free slot to open one.
        self._accept_waiters: deque[asyncio.Future[Stream]] = deque()
        self._unacked_waiters: deque[asyncio.Future[None]] = deque()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count(1)
        self._keepalive: asyncio.TimerHandle | None = None
        self._received = False
        #: Bytes read from and written to the connection (frames and headers included).
        self.bytes_in = 0
        self.bytes_out = 0
        #: Why the session ended, or None while it runs (read it as :attr:`error`).
        self._error: BaseException | None = None
        self._closed = self._loop.create_future()

    # -- connection ----------------------------------------------------------------------

    def take_over(self, transport: asyncio.Transport, data: bytes = b"") -> None:
        """Run on a transport another protocol was using, with the bytes it already read."""
        transport.set_protocol(self)
        self.connection_made(transport)
        if data:
            self.data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=self.config.transport_write_high)
        if self.client:  # a server waits for the first frame (koding's Go client needs that)
            self._arm_keepalive()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            error = SessionClosedError("connection lost" if exc else "connection closed")
            error.__cause__ = exc
            self._error = error
        self._transport = None
        self._teardown()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            if not self._yielding:
                self._transport.resume_reading()
        if self._mux.has_output:
            self._schedule_flush()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if not self._received:
            self._received = True
            if self._keepalive is None:
                self._arm_keepalive()
        if self._unparsed is not None:
            # Reading was paused for the rest of an earlier read; a transport may still
            # hand over bytes it had (take_over): they queue behind that rest, in order.
            self._unparsed = memoryview(bytes(self._unparsed) + data)
            return
        self._parse(data)

    def _parse(self, data: bytes | memoryview) -> None:
        try:
            taken = self._mux.feed(data)
        except ProtocolError as exc:
            self._fail(exc, exc.go_away_code)
            return
        except Exception as exc:
            logger.exception("internal error in the yamux session")
            self._fail(exc, GO_AWAY_INTERNAL_ERROR)
            return
        if taken < len(data):
            # The parser's frame budget is spent (a flood of tiny frames): the rest of
            # this read waits until the loop has gone round once.
            self._unparsed = memoryview(data)[taken:]
            self._yield_loop()
            return
        # uvloop (libuv) reads a ready socket up to 32 times in one go: a peer that floods
        # small frames would hold the loop for seconds, with every other session waiting.
        # Past the budget, stop reading until the loop has gone round once.
        self._fed += len(data)
        if self._fed >= _READ_BUDGET:
            self._yield_loop()

    def _yield_loop(self) -> None:
        if not self._yielding and self._transport is not None:
            self._yielding = True
            self._transport.pause_reading()
            self._loop.call_soon(self._read_again)

    def _read_again(self) -> None:
        self._fed = 0
        rest = self._unparsed
        if rest is not None:
            self._unparsed = None
            if self._error is not None:
                return
            self._parse(rest)
            if self._unparsed is not None:  # the budget ran out again: one more turn
                self._loop.call_soon(self._read_again)
                return
        self._yielding = False
        transport = self._transport
        if transport is not None and not self._reading_paused and not transport.is_closing():
            transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    @property
    def error(self) -> BaseException | None:
        """Why the session ended (a :class:`SessionClosedError`), or None while it runs."""
        return self._error

    @property
    def is_closed(self) -> bool:
        return self._error is not None

    @property
    def stream_count(self) -> int:
        return len(self._mux.streams)

    @property
    def control_queue_bytes(self) -> int:
        """Bytes of control frames (ACK, RST, window updates, pongs...) not yet written."""
        return self._mux.control_bytes

    # -- what the core asks of us (through _Hooks) ---------------------------------------

    def _output_ready(self) -> None:
        if self._writing_paused and self._mux.control_bytes >= self._control_pause:
            self._output_held()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _inbound_stream(self, stream: Stream) -> None:
        if self._protocol_factory is None:
            self._hand_over(stream)
            return
        try:
            stream.attach(self._protocol_factory())
        except Exception as exc:
            logger.exception("protocol factory failed; resetting stream %d", stream.stream_id)
            stream.reset(exc)

    def _open_slot_freed(self) -> None:
        while self._unacked_waiters:
            waiter = self._unacked_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def _pong_received(self, value: int) -> None:
        waiter = self._pings.pop(value, None)  # unknown pongs are ignored
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _go_away_received(self, code: int) -> None:
        if code != GO_AWAY_NORMAL:
            self._fail(GoAwayError(code), None)
        elif self._on_remote_go_away is not None:
            self._on_remote_go_away()

    def _output_held(self) -> None:
        """The peer is not reading, yet its frames keep asking for replies (SYN floods,
        resets, pings). Stop reading it; give up once even that cannot bound the replies."""
        mux = self._mux
        if mux.control_bytes > self.config.max_control_queue:
            if not mux.replies_dropped:
                mux.replies_dropped = True
                exc = PeerNotReadingError(
                    f"{mux.control_bytes} bytes of control frames are waiting for a peer "
                    "that does not read"
                )
                # Not now: we may be deep inside a stream's callback or the parser.
                self._loop.call_soon(self._fail, exc, GO_AWAY_INTERNAL_ERROR)
        elif not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    # -- opening and accepting streams ----------------------------------------------------

    async def open_stream(self, protocol_factory: ProtocolFactory) -> tuple[Stream, Any]:
        """Open a stream and attach ``protocol_factory()`` to it; never waits for the ACK.

        Waits only while ``max_unacked_streams`` opens are still unacknowledged.
        """
        while self._mux.unacked >= self.config.max_unacked_streams and self._error is None:
            waiter = self._loop.create_future()
            self._unacked_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if _forget(self._unacked_waiters, waiter):
                    self._open_slot_freed()  # we were woken for a free slot: pass it on
                raise
        return self.open_stream_nowait(protocol_factory)

    def open_stream_nowait(self, protocol_factory: ProtocolFactory) -> tuple[Stream, Any]:
        """:meth:`open_stream` without waiting: raises StreamLimitError instead."""
        self._check_open()
        stream = self._mux.open_stream()
        protocol = protocol_factory()
        stream.attach(protocol)
        return stream, protocol

    async def accept_stream(self, protocol_factory: ProtocolFactory) -> tuple[Stream, Any]:
        """Wait for the next inbound stream and attach ``protocol_factory()`` to it."""
        if self._protocol_factory is not None:
            raise RuntimeError("this session hands inbound streams to its protocol_factory")
        backlog = self._mux.backlog
        while True:
            if backlog:
                stream = backlog.popleft()
            else:
                self._check_alive()
                waiter: asyncio.Future[Stream] = self._loop.create_future()
                self._accept_waiters.append(waiter)
                try:
                    stream = await waiter
                except asyncio.CancelledError:
                    if _forget(self._accept_waiters, waiter) and not waiter.result().finished:
                        self._hand_over(waiter.result(), first=True)  # not ours after all
                    raise
            if not stream.finished:
                protocol = protocol_factory()
                stream.attach(protocol)
                return stream, protocol

    def _hand_over(self, stream: Stream, first: bool = False) -> None:
        """Give an inbound stream to the oldest waiting acceptor, or queue it."""
        while self._accept_waiters:
            waiter = self._accept_waiters.popleft()
            if not waiter.done():
                waiter.set_result(stream)
                return
        if first:
            self._mux.backlog.appendleft(stream)
        else:
            self._mux.backlog.append(stream)

    def _check_alive(self) -> None:
        if self._error is not None:
            raise SessionClosedError("the session is closed") from self._error

    def _check_open(self) -> None:
        self._check_alive()
        if self._mux.local_go_away:
            raise SessionClosedError("the session is closing")
        if self._mux.remote_go_away:
            raise GoAwayError(GO_AWAY_NORMAL)

    # -- outbound frames ------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self, final: bool = False) -> None:
        self._flush_scheduled = False
        transport = self._transport
        # A transport already closing must not be written to (CPython 3.13.0 breaks on it).
        if transport is None or self._error is not None or transport.is_closing():
            return
        if self._writing_paused and not final:
            # Replies wait with the data: written now they would only pile up in the
            # transport's buffer, unbounded, behind a peer that does not read.
            return
        out = self._mux.take_output(data=not self._writing_paused)
        if out:
            self.bytes_out += sum(map(len, out))
            if _WRITELINES_CHECKS_LIMITS:
                transport.writelines(out)
            else:
                transport.write(b"".join(out))

    # -- ping, keepalive, go away, close ---------------------------------------------------

    async def ping(self) -> float:
        """Round-trip time to the peer in seconds; raises on timeout or a closed session."""
        self._check_alive()
        ping_id = next(self._ping_ids) & 0xFFFFFFFF
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._pings[ping_id] = waiter
        started = time.perf_counter()
        self._mux.send_ping(ping_id)
        try:
            await asyncio.wait_for(waiter, self.config.ping_timeout)
        except asyncio.TimeoutError:
            raise KeepaliveTimeoutError(
                f"no ping reply within {self.config.ping_timeout} s"
            ) from None
        finally:
            self._pings.pop(ping_id, None)
        return time.perf_counter() - started

    def _arm_keepalive(self) -> None:
        interval = self.config.keepalive_interval
        if interval is not None and self._error is None:
            self._received = False
            self._keepalive = self._loop.call_later(interval, self._keepalive_due)

    def _keepalive_due(self) -> None:
        if self._received:  # the peer is talking: no ping needed
            self._arm_keepalive()
            return
        # self._keepalive keeps the spent handle while the ping is out, so frames arriving
        # meanwhile (the pong among them) do not arm a second timer in data_received.
        task = self._loop.create_task(self._keepalive_ping())
        task.add_done_callback(_consume_result)

    async def _keepalive_ping(self) -> None:
        try:
            await self.ping()
        except KeepaliveTimeoutError as exc:
            if self._error is None:
                self._fail(exc, None)
            return
        except SessionClosedError:
            return
        self._arm_keepalive()

    def go_away(self) -> None:
        """Tell the peer we take no new streams (Go Away 0); open streams carry on."""
        if not self._mux.local_go_away and self._error is None:
            self._mux.local_go_away = True
            self._mux.queue_control(self._mux.go_away_frame(GO_AWAY_NORMAL))

    def close(self) -> None:
        """Flush what can be sent, send Go Away (0), close the connection. Idempotent."""
        if self._error is not None:
            return
        self._mux.local_go_away = True
        self._flush(final=True)
        self._error = SessionClosedError("the session was closed")
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(self._mux.go_away_frame(GO_AWAY_NORMAL))
            transport.close()
        self._teardown()

    def abort(self) -> None:
        """Drop the connection at once, without Go Away."""
        if self._error is None:
            self._error = SessionClosedError("the session was aborted")
        if self._transport is not None:
            self._transport.abort()
        self._teardown()

    async def wait_closed(self) -> None:
        """Wait until the session is closed and every stream has been told."""
        await asyncio.shield(self._closed)

    def _fail(self, exc: BaseException, go_away_code: int | None) -> None:
        """Tear the session down after an error, telling the peer why when we can."""
        if self._error is not None:
            return
        if isinstance(exc, SessionClosedError):
            self._error = exc
        else:
            self._error = SessionClosedError(f"yamux session failed: {exc}")
            self._error.__cause__ = exc
        logger.debug("yamux session failed: %s", exc)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if go_away_code is not None:
                transport.write(self._mux.go_away_frame(go_away_code))
            if self._writing_paused:
                # close() would wait for a peer that does not read to take the whole
                # buffer, holding it for as long as the peer likes.
                transport.abort()
            else:
                transport.close()
        self._teardown()

    def _teardown(self) -> None:
        """Fail every stream and waiter with the session's error. Runs once per cause."""
        error = self._error
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        self._mux.close_all(error)
        for waiters in (self._accept_waiters, self._unacked_waiters, self._pings.values()):
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(SessionClosedError(str(error)))
                    waiter.exception()  # a waiter cancelled meanwhile must not warn
        self._accept_waiters.clear()
        self._unacked_waiters.clear()
        self._pings.clear()
        if not self._closed.done():
            self._closed.set_result(None)


class _Hooks:
    """The core's view of its Session: bound methods, so no call pays an extra frame."""

    __slots__ = (
        "session",
        "call_soon",
        "call_later",
        "output_ready",
        "inbound_stream",
        "open_slot_freed",
        "pong_received",
        "go_away_received",
        "get_extra_info",
    )

    def __init__(self, session: Session, loop: asyncio.AbstractEventLoop) -> None:
        self.session = session
        self.call_soon = loop.call_soon
        self.call_later = loop.call_later
        self.output_ready = session._output_ready
        self.inbound_stream = session._inbound_stream
        self.open_slot_freed = session._open_slot_freed
        self.pong_received = session._pong_received
        self.go_away_received = session._go_away_received
        self.get_extra_info = session.get_extra_info


def _forget(waiters: deque[asyncio.Future[Any]], waiter: asyncio.Future[Any]) -> bool:
    """Drop the waiter of a cancelled caller; True if it had already been given a result
    (which the caller will now never see, so it must be passed on)."""
    try:
        waiters.remove(waiter)
    except ValueError:
        pass
    return waiter.done() and not waiter.cancelled() and waiter.exception() is None


def _consume_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
