"""Test peers for the yamux layer: a pair of sessions over loopback, and a raw peer that
speaks frames byte by byte to one session so a test can script the other side."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from types import ModuleType

from ytun.yamux import Config, Session

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
