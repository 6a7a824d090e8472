"""Test peers for the yamux layer: a pair of sessions over loopback, a raw peer that
speaks frames byte by byte to one session so a test can script the other side, and the
probes and waits the session tests share."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import struct
from dataclasses import dataclass
from types import ModuleType

from ytun._const import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
)
from ytun.yamux import Config, Session, Stream, StreamConnection, accept_connection
from ytun.yamux.core import Multiplexer

HEADER = struct.Struct(">BBHII")


def frame(frame_type: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    """Raw frame bytes, built independently of the codec under test."""
    return HEADER.pack(0, frame_type, flags, stream_id, length) + payload


@dataclass
class Frame:
    type: int
    flags: int
    stream_id: int
    length: int
    payload: bytes = b""


class Recorder:
    """A frame handler that records what the parser dispatches."""

    def __init__(self) -> None:
        self.frames: list[tuple] = []

    def on_data(self, stream_id: int, flags: int, payload: bytes) -> None:
        assert type(payload) is bytes
        self.frames.append(("data", stream_id, flags, payload))

    def on_window_update(self, stream_id: int, flags: int, delta: int) -> None:
        self.frames.append(("window", stream_id, flags, delta))

    def on_ping(self, flags: int, value: int) -> None:
        self.frames.append(("ping", flags, value))

    def on_go_away(self, code: int) -> None:
        self.frames.append(("go_away", code))


class SessionPair:
    """A client and a server session joined by a loopback TCP connection."""

    client: Session
    server: Session

    def __init__(
        self,
        client_config: Config | None = None,
        server_config: Config | None = None,
        *,
        codec: ModuleType | None = None,
    ) -> None:
        self._client_config = client_config
        self._server_config = server_config
        self._codec = codec

    async def __aenter__(self) -> SessionPair:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[Session] = loop.create_future()

        def server_factory() -> Session:
            session = Session(client=False, config=self._server_config, codec=self._codec)
            if not made.done():
                made.set_result(session)
            return session

        self._listener = await loop.create_server(server_factory, "127.0.0.1", 0)
        port = self._listener.sockets[0].getsockname()[1]
        _, self.client = await loop.create_connection(
            lambda: Session(client=True, config=self._client_config, codec=self._codec),
            "127.0.0.1",
            port,
        )
        self.server = await asyncio.wait_for(made, 5)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.client.abort()
        self.server.abort()
        self._listener.close()
        await self._listener.wait_closed()


class RawPeer:
    """One session under test, its other end driven frame by frame by the test."""

    session: Session

    def __init__(
        self,
        *,
        session_is_client: bool,
        config: Config | None = None,
        protocol_factory=None,
        codec: ModuleType | None = None,
    ) -> None:
        self._codec = codec
        self._session_is_client = session_is_client
        self._config = config
        self._protocol_factory = protocol_factory

    async def __aenter__(self) -> RawPeer:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            loop.create_future()
        )

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result((reader, writer))

        self._listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = self._listener.sockets[0].getsockname()[1]
        _, self.session = await loop.create_connection(
            lambda: Session(
                client=self._session_is_client,
                config=self._config,
                protocol_factory=self._protocol_factory,
                codec=self._codec,
            ),
            "127.0.0.1",
            port,
        )
        self.reader, self.writer = await asyncio.wait_for(accepted, 5)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.session.abort()
        self.writer.close()
        self._listener.close()
        await self._listener.wait_closed()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self, timeout: float = 5) -> Frame:
        header = await asyncio.wait_for(self.reader.readexactly(12), timeout)
        version, frame_type, flags, stream_id, length = HEADER.unpack(header)
        assert version == 0
        payload = b""
        if frame_type == 0 and length:
            payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return Frame(frame_type, flags, stream_id, length, payload)

    async def expect(
        self, frame_type: int, stream_id: int | None = None, timeout: float = 5
    ) -> Frame:
        """The next frame of ``frame_type`` (and stream), skipping window updates without
        flags that are not asked for."""
        while True:
            got = await self.read_frame(timeout)
            if got.type == frame_type and (stream_id is None or got.stream_id == stream_id):
                return got
            if got.type == 1 and got.flags == 0:
                continue
            raise AssertionError(f"expected type {frame_type} on {stream_id}, got {got}")

    async def read_until_closed(self, timeout: float = 5) -> list[Frame]:
        """Every frame until the session closes the connection."""
        frames = []
        while True:
            try:
                frames.append(await self.read_frame(timeout))
            except asyncio.IncompleteReadError:
                return frames


# -- shared by the session tests ---------------------------------------------------------

DATA, WINDOW, PING, GO_AWAY = TYPE_DATA, TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY
SYN, ACK, FIN, RST = FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST

FAST = Config(
    keepalive_interval=None, ping_timeout=0.5, stream_open_timeout=None, stream_close_timeout=None
)


def fast(**changes) -> Config:
    """A small config with no timers unless a test asks for one."""
    return dataclasses.replace(FAST, **changes)


class Probe(asyncio.Protocol):
    """A stream protocol that records every callback; it never raises inside one."""

    def __init__(self, *, paused: bool = False, keep_open: bool = True) -> None:
        self.transport: Stream | None = None
        self.data = bytearray()
        self.eofs = 0
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.pauses = 0
        self.resumes = 0
        self.violations: list[str] = []
        self._start_paused = paused
        self._keep_open = keep_open

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._start_paused:
            transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.eofs or self.lost.done():
            self.violations.append(f"data_received after eof/close: {data[:20]!r}")
        self.data += data

    def eof_received(self) -> bool:
        self.eofs += 1
        return self._keep_open

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.lost.done():
            self.violations.append("connection_lost twice")
            return
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        self.resumes += 1


async def until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait (bounded) until ``predicate()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def lost(probe: Probe, timeout: float = 5.0) -> BaseException | None:
    return await asyncio.wait_for(asyncio.shield(probe.lost), timeout)


_ping_values = itertools.count(0x7000_0000)


async def round_trip(peer: RawPeer) -> list[Frame]:
    """Send a ping and return the frames the session sent before answering it."""
    value = next(_ping_values)
    peer.send(frame(PING, SYN, 0, value))
    frames = []
    while True:
        got = await peer.read_frame()
        if got.type == PING and got.flags & ACK and got.length == value:
            return frames
        frames.append(got)


async def settle(peer: RawPeer) -> list[Frame]:
    """Every frame the session emits in reaction to what the peer sent so far: two ping
    round trips, so frames queued behind the first pong in the same flush are in too."""
    return await round_trip(peer) + await round_trip(peer)


def of_stream(frames: list[Frame], stream_id: int) -> list[Frame]:
    return [f for f in frames if f.stream_id == stream_id]


def is_ack(f: Frame, stream_id: int) -> bool:
    return f.type == WINDOW and f.stream_id == stream_id and f.flags & ACK and not f.flags & RST


def is_rst(f: Frame, stream_id: int) -> bool:
    return f.type in (DATA, WINDOW) and f.stream_id == stream_id and bool(f.flags & RST)


async def read_data(peer: RawPeer, stream_id: int, size: int) -> tuple[bytes, list[Frame]]:
    """Read frames until ``size`` payload bytes of ``stream_id`` arrived."""
    data = bytearray()
    frames = []
    while len(data) < size:
        got = await peer.read_frame()
        frames.append(got)
        if got.type == DATA and got.stream_id == stream_id:
            data += got.payload
    return bytes(data), frames


async def open_raw(peer: RawPeer, stream_id: int = 1, **probe_args) -> tuple[Stream, Probe]:
    """The raw peer opens ``stream_id``; the session accepts it with a Probe."""
    peer.send(frame(WINDOW, SYN, stream_id, 0))
    stream, probe = await asyncio.wait_for(
        peer.session.accept_stream(lambda: Probe(**probe_args)), 5
    )
    assert stream.stream_id == stream_id
    return stream, probe


async def open_raw_connection(peer: RawPeer, stream_id: int) -> StreamConnection:
    """The raw peer opens ``stream_id``; the session accepts it as a StreamConnection."""
    peer.send(frame(WINDOW, SYN, stream_id, 0))
    return await asyncio.wait_for(accept_connection(peer.session), 5)


# -- the sans-I/O core, driven without sockets or an event loop ----------------------------


class Recording(asyncio.BaseProtocol):
    """A stream protocol that writes down every callback, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.transport: Stream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.events.append(("made",))

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", bytes(data)))

    def eof_received(self) -> bool:
        self.events.append(("eof",))
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(("lost", exc))

    @property
    def data(self) -> bytes:
        return b"".join(event[1] for event in self.events if event[0] == "data")

    @property
    def lost(self) -> list[BaseException | None]:
        return [event[1] for event in self.events if event[0] == "lost"]


class Timer:
    def __init__(self, delay: float, callback) -> None:
        self.delay = delay
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert not self.cancelled
        self.callback()


class CoreDriver:
    """A :class:`Multiplexer` whose hooks record instead of doing I/O: the core tests feed
    it frames and read back what it would send. ``attach=True`` gives every inbound
    stream a :class:`Recording` at once (like a session's protocol_factory); otherwise
    inbound streams wait in the backlog."""

    def __init__(
        self,
        codec: ModuleType,
        *,
        client: bool = False,
        config: Config | None = None,
        attach: bool = True,
    ) -> None:
        self.attach = attach
        self.session = None
        self.soon: list[tuple] = []
        self.timers: list[Timer] = []
        self.inbound: list[Stream] = []
        self.protocols: dict[int, Recording] = {}
        self.pongs: list[int] = []
        self.go_aways: list[int] = []
        self.slots_freed = 0
        self.output_calls = 0
        self.mux = Multiplexer(
            client=client,
            config=config or Config(),
            codec=codec,
            hooks=self,
            backlog=not attach,
        )

    # hooks
    def call_soon(self, callback, *args) -> None:
        self.soon.append((callback, args))

    def call_later(self, delay: float, callback) -> Timer:
        timer = Timer(delay, callback)
        self.timers.append(timer)
        return timer

    def output_ready(self) -> None:
        self.output_calls += 1

    def inbound_stream(self, stream: Stream) -> None:
        self.inbound.append(stream)
        if self.attach:
            self.protocols[stream.stream_id] = protocol = Recording()
            stream.attach(protocol)
        else:
            self.mux.backlog.append(stream)

    def open_slot_freed(self) -> None:
        self.slots_freed += 1

    def pong_received(self, value: int) -> None:
        self.pongs.append(value)

    def go_away_received(self, code: int) -> None:
        self.go_aways.append(code)

    def get_extra_info(self, name: str, default=None):
        return default

    # driving
    def feed(self, *frames: bytes) -> None:
        data = memoryview(b"".join(frames))
        while data:  # past the frame budget, as a session would on its next loop turn
            data = data[self.mux.feed(data) :]

    def run(self) -> None:
        """Run the callbacks a loop would run next (deliveries, connection_lost)."""
        while self.soon:
            callback, args = self.soon.pop(0)
            callback(*args)

    def open(self) -> tuple[Stream, Recording]:
        stream = self.mux.open_stream()
        protocol = Recording()
        stream.attach(protocol)
        self.protocols[stream.stream_id] = protocol
        return stream, protocol

    def sent(self, data: bool = True) -> list[Frame]:
        """The frames the core would write now, decoded."""
        raw = b"".join(bytes(part) for part in self.mux.take_output(data))
        frames = []
        pos = 0
        while pos < len(raw):
            _, frame_type, flags, stream_id, length = HEADER.unpack_from(raw, pos)
            pos += 12
            payload = b""
            if frame_type == TYPE_DATA:
                payload = raw[pos : pos + length]
                pos += length
            frames.append(Frame(frame_type, flags, stream_id, length, payload))
        return frames
