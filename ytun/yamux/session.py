"""The yamux session: an asyncio Protocol on one TCP/TLS connection carrying many streams.

Incoming bytes go straight to the frame parser (compiled), which calls back once per
frame. Outgoing frames queued during one loop iteration leave in one ``writelines``:
control frames (ACK, RST, window updates, pings, Go Away) first, then stream data.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._const import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_INTERNAL_ERROR,
    GO_AWAY_NORMAL,
    INITIAL_WINDOW,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
)
from ..errors import (
    GoAwayError,
    KeepaliveTimeoutError,
    ProtocolError,
    SessionClosedError,
    StreamLimitError,
    StreamResetError,
    StreamsExhaustedError,
)
from . import codec
from .config import Config
from .stream import Stream

logger = logging.getLogger("ytun.yamux")

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

_LAST_STREAM_ID = 0xFFFFFFFD

# asyncio's writelines() skipped the write-buffer limits (so pause_writing never came) in
# CPython 3.12.0-3.12.8 and 3.13.0-3.13.1 (GHSA-fw89-6wjj-8j95); join instead there.
_WRITELINES_CHECKS_LIMITS = not (
    (3, 12) <= sys.version_info[:3] < (3, 12, 9) or (3, 13) <= sys.version_info[:3] < (3, 13, 2)
)


class Session(asyncio.Protocol):
    """One end of a yamux connection.

    ``client=True`` opens odd stream IDs, ``client=False`` even ones. Inbound streams get
    a protocol from ``protocol_factory`` at once (like ``loop.create_server``), or wait in
    a bounded backlog for :meth:`accept_stream` when no factory is given.
    ``on_remote_go_away()`` is called when the peer announces it takes no new streams.
    """

    def __init__(
        self,
        *,
        client: bool,
        config: Config | None = None,
        protocol_factory: ProtocolFactory | None = None,
        on_remote_go_away: Callable[[], None] | None = None,
    ) -> None:
        self.config = config = config or Config()
        self.client = client
        self._loop = asyncio.get_running_loop()
        self._protocol_factory = protocol_factory
        self._on_remote_go_away = on_remote_go_away
        self._parser = codec.FrameParser(self, config.max_recv_payload)
        self._flow_window = codec.FlowWindow
        self._encode_header = codec.encode_header
        self._next_id = 1 if client else 2
        self._remote_parity = 0 if client else 1
        self._streams: dict[int, Stream] = {}
        self._transport: asyncio.Transport | None = None
        # Output of the current loop iteration, flushed together.
        self._control: list[bytes] = []
        self._ready: dict[Stream, None] = {}
        self._flush_scheduled = False
        self._writing_paused = False
        self._pongs_queued = 0
        # Inbound streams waiting for accept_stream, and the callers waiting for them.
        self._backlog: deque[Stream] = deque()
        self._accept_waiters: deque[asyncio.Future[Stream]] = deque()
        self._unacked = 0
        self._unacked_waiters: deque[asyncio.Future[None]] = deque()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count(1)
        self._keepalive: asyncio.TimerHandle | None = None
        self._received = False
        self._local_go_away = False
        self._remote_go_away = False
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
        self._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=self.config.transport_write_high)  # type: ignore[attr-defined]
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
        if self._ready:
            self._schedule_flush()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    @property
    def is_closed(self) -> bool:
        return self._error is not None

    @property
    def error(self) -> BaseException | None:
        """Why the session ended (a :class:`SessionClosedError`), or None while it runs."""
        return self._error

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    # -- inbound frames (called by the parser) --------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._received:
            self._received = True
            if self._keepalive is None:
                self._arm_keepalive()
        try:
            self._parser.feed(data)
        except ProtocolError as exc:
            self._fail(exc, exc.go_away_code)
        except Exception as exc:
            logger.exception("internal error in the yamux session")
            self._fail(exc, GO_AWAY_INTERNAL_ERROR)

    def on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        stream = self._streams.get(stream_id)
        if flags:
            if flags & FLAG_SYN:
                if len(payload) > INITIAL_WINDOW:  # more than the opener can have credit for
                    raise ProtocolError(
                        f"peer opened stream {stream_id} with {len(payload)} "
                        "bytes, beyond the initial window"
                    )
                stream = self._inbound(stream_id, flags)
            if stream is None:
                return
            if flags & FLAG_ACK:
                stream._on_ack()
            if flags & FLAG_RST:
                stream._on_remote_reset()
                return
        elif stream is None:
            return  # unknown or finished stream: the parser already skipped the body
        if payload:
            if stream._remote_fin:
                stream.reset(
                    StreamResetError(f"peer sent data on stream {stream_id} after closing it")
                )
                return
            protocol = stream._protocol
            if (
                protocol is not None
                and not stream._reading_paused
                and not stream._recv
                and not stream._closing
                and not stream._done
            ):
                delta = stream._window.receive_consumed(len(payload))
                if delta:
                    self._window_update(stream_id, delta)
                try:
                    protocol.data_received(payload)  # type: ignore[attr-defined]
                except Exception as exc:
                    stream._protocol_failed(exc)
            else:
                stream._on_data(payload)
        if flags & FLAG_FIN:
            stream._on_remote_fin()

    def on_window_update(self, stream_id: int, flags: int, delta: int) -> None:
        stream = self._streams.get(stream_id)
        if flags & FLAG_SYN:
            stream = self._inbound(stream_id, flags)
        if stream is None:
            return
        if flags & FLAG_ACK:
            stream._on_ack()
        if flags & FLAG_RST:
            stream._on_remote_reset()
            return
        if delta:
            stream._on_window_update(delta)
        if flags & FLAG_FIN:
            if not stream._acked:
                stream._on_ack()  # a FIN answers an open as well as an ACK does
            stream._on_remote_fin()

    def on_ping(self, flags: int, value: int) -> None:
        if flags & FLAG_SYN:
            if self._pongs_queued < self.config.pong_backlog:
                self._pongs_queued += 1
                self._queue_control(self._encode_header(TYPE_PING, FLAG_ACK, 0, value))
        else:
            waiter = self._pings.pop(value, None)  # unknown pongs are ignored
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def on_go_away(self, code: int) -> None:
        if code == GO_AWAY_NORMAL:
            # The peer takes no new streams; the ones open now may finish.
            self._remote_go_away = True
            if self._on_remote_go_away is not None:
                self._on_remote_go_away()
            return
        self._fail(GoAwayError(code), None)

    def _inbound(self, stream_id: int, flags: int) -> Stream | None:
        if stream_id & 1 != self._remote_parity:
            raise ProtocolError(f"peer opened stream {stream_id}, which has our parity")
        if stream_id in self._streams:
            raise ProtocolError(f"peer opened stream {stream_id} twice")
        if flags & FLAG_RST:
            return None  # opened and reset at once: nothing to surface
        if (
            self._local_go_away
            or self._error is not None
            or len(self._streams) >= self.config.max_streams
            or (self._protocol_factory is None and len(self._backlog) >= self.config.accept_backlog)
        ):
            self._send_reset(stream_id)
            return None
        window = self._flow_window(self.config.recv_window)
        stream = Stream(self, stream_id, window, acked=True)
        self._streams[stream_id] = stream
        # Acknowledge at once: hashicorp peers kill the session after 75 s without an ACK.
        self._queue_control(
            self._encode_header(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, window.update(True))
        )
        if self._protocol_factory is not None:
            try:
                stream._attach(self._protocol_factory())
            except Exception as exc:
                logger.exception("protocol factory failed; resetting stream %d", stream_id)
                stream.reset(exc)
                return None
        else:
            self._hand_over(stream)
        return stream

    def _hand_over(self, stream: Stream, first: bool = False) -> None:
        """Give an inbound stream to the oldest waiting acceptor, or queue it."""
        while self._accept_waiters:
            waiter = self._accept_waiters.popleft()
            if not waiter.done():
                waiter.set_result(stream)
                return
        if first:
            self._backlog.appendleft(stream)
        else:
            self._backlog.append(stream)

    # -- opening and accepting streams ----------------------------------------------------

    async def open_stream(self, protocol_factory: ProtocolFactory) -> tuple[Stream, Any]:
        """Open a stream and attach ``protocol_factory()`` to it; never waits for the ACK.

        Waits only while ``max_unacked_streams`` opens are still unacknowledged.
        """
        while self._unacked >= self.config.max_unacked_streams and self._error is None:
            waiter = self._loop.create_future()
            self._unacked_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if _forget(self._unacked_waiters, waiter):
                    self._wake_opener()  # we were woken for a free slot: pass it on
                raise
        return self.open_stream_nowait(protocol_factory)

    def open_stream_nowait(self, protocol_factory: ProtocolFactory) -> tuple[Stream, Any]:
        """:meth:`open_stream` without waiting: raises StreamLimitError instead."""
        self._check_open()
        if self._unacked >= self.config.max_unacked_streams:
            raise StreamLimitError(f"{self._unacked} streams are not yet acknowledged")
        if len(self._streams) >= self.config.max_streams:
            raise StreamLimitError(
                f"session holds its maximum of {self.config.max_streams} streams"
            )
        stream_id = self._next_id
        if stream_id > _LAST_STREAM_ID:
            raise StreamsExhaustedError("no stream IDs left on this session")
        self._next_id += 2
        window = self._flow_window(self.config.recv_window)
        stream = Stream(self, stream_id, window, acked=False)
        self._streams[stream_id] = stream
        self._unacked += 1
        self._queue_control(
            self._encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id, window.update(True))
        )
        timeout = self.config.stream_open_timeout
        if timeout is not None:
            stream._timer = self._loop.call_later(timeout, stream._open_timed_out)
        protocol = protocol_factory()
        stream._attach(protocol)
        return stream, protocol

    async def accept_stream(self, protocol_factory: ProtocolFactory) -> tuple[Stream, Any]:
        """Wait for the next inbound stream and attach ``protocol_factory()`` to it."""
        if self._protocol_factory is not None:
            raise RuntimeError("this session hands inbound streams to its protocol_factory")
        while True:
            if self._backlog:
                stream = self._backlog.popleft()
            else:
                self._check_alive()
                waiter: asyncio.Future[Stream] = self._loop.create_future()
                self._accept_waiters.append(waiter)
                try:
                    stream = await waiter
                except asyncio.CancelledError:
                    if _forget(self._accept_waiters, waiter) and not waiter.result()._done:
                        self._hand_over(waiter.result(), first=True)  # not ours after all
                    raise
            if not stream._done:
                protocol = protocol_factory()
                stream._attach(protocol)
                return stream, protocol

    def _check_alive(self) -> None:
        if self._error is not None:
            raise SessionClosedError("the session is closed") from self._error

    def _check_open(self) -> None:
        self._check_alive()
        if self._local_go_away:
            raise SessionClosedError("the session is closing")
        if self._remote_go_away:
            raise GoAwayError(GO_AWAY_NORMAL)

    def _stream_acked(self) -> None:
        self._unacked -= 1
        self._wake_opener()

    def _wake_opener(self) -> None:
        while self._unacked_waiters:
            waiter = self._unacked_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def _stream_finished(self, stream: Stream) -> None:
        self._streams.pop(stream.stream_id, None)
        self._ready.pop(stream, None)
        if not stream._acked:
            stream._acked = True
            self._stream_acked()
        if stream._protocol is None:
            try:
                self._backlog.remove(stream)
            except ValueError:
                pass

    # -- outbound frames ------------------------------------------------------------------

    def _queue_control(self, frame: bytes) -> None:
        self._control.append(frame)
        self._schedule_flush()

    def _window_update(self, stream_id: int, delta: int) -> None:
        if delta:
            self._queue_control(self._encode_header(TYPE_WINDOW_UPDATE, 0, stream_id, delta))

    def _send_reset(self, stream_id: int) -> None:
        self._queue_control(self._encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))

    def _stream_ready(self, stream: Stream) -> None:
        self._ready[stream] = None
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        # A transport already closing must not be written to (CPython 3.13.0 breaks on it).
        if transport is None or self._error is not None or transport.is_closing():
            return
        out: list[Any] = self._control
        self._control = []
        self._pongs_queued = 0
        if not self._writing_paused and self._ready:
            ready = self._ready
            self._ready = {}
            encode_header = self._encode_header
            max_payload = self.config.max_frame_payload
            # Round robin, about one frame per stream per turn: a bulk stream delays the
            # others' frames by one frame each, not by its whole window.
            streams = list(ready)
            while streams:
                streams = [stream for stream in streams if stream._wants_emit()]
                for stream in streams:
                    stream._emit(out, encode_header, max_payload)
        if out:
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
        self._queue_control(self._encode_header(TYPE_PING, FLAG_SYN, 0, ping_id))
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
        if not self._local_go_away and self._error is None:
            self._local_go_away = True
            self._queue_control(self._encode_header(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL))

    def close(self) -> None:
        """Flush what can be sent, send Go Away (0), close the connection. Idempotent."""
        if self._error is not None:
            return
        self._local_go_away = True
        self._flush()
        self._error = SessionClosedError("the session was closed")
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(self._encode_header(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL))
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
                transport.write(self._encode_header(TYPE_GO_AWAY, 0, 0, go_away_code))
            transport.close()
        self._teardown()

    def _teardown(self) -> None:
        """Fail every stream and waiter with the session's error. Runs once per cause."""
        error = self._error
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        for stream in list(self._streams.values()):
            stream._finish(error)
        self._backlog.clear()
        self._ready.clear()
        self._control.clear()
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
