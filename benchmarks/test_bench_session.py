"""Throughput of one yamux stream between two ytun sessions over loopback TCP, on uvloop,
with the compiled (``c``) and the pure-Python (``py``) codec on both ends."""

from __future__ import annotations

import asyncio
from types import ModuleType

import pytest

from ytun.yamux import Config, Session

uvloop = pytest.importorskip("uvloop")

ROUND_BYTES = 64 * 1024 * 1024
BLOCK = b"\xa5" * (256 * 1024)


class Sink(asyncio.Protocol):
    """Counts what arrives and wakes the benchmark once a target is reached."""

    def __init__(self) -> None:
        self.received = 0
        self.target = 0
        self.reached: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.reached is not None and self.received >= self.target:
            self.reached.set_result(None)
            self.reached = None


class Source(asyncio.Protocol):
    """Writes honour the stream's flow control through pause/resume_writing."""

    def __init__(self) -> None:
        self.resumed: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.resumed is not None:
            self.resumed.set_result(None)
            self.resumed = None


async def connect(codec: ModuleType) -> tuple[Session, Session, asyncio.Server, Sink]:
    loop = asyncio.get_running_loop()
    sink = Sink()
    made: asyncio.Future[Session] = loop.create_future()

    def server_factory() -> Session:
        session = Session(client=False, protocol_factory=lambda: sink, codec=codec)
        made.set_result(session)
        return session

    listener = await loop.create_server(server_factory, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(
        lambda: Session(client=True, codec=codec), "127.0.0.1", port
    )
    return client, await made, listener, sink


def test_stream_throughput(benchmark, codec, throughput):
    loop = uvloop.new_event_loop()
    client, server, listener, sink = loop.run_until_complete(connect(codec))
    try:
        stream, source = loop.run_until_complete(client.open_stream(Source))

        async def transfer() -> None:
            sink.target = sink.received + ROUND_BYTES
            sink.reached = reached = loop.create_future()
            for _ in range(ROUND_BYTES // len(BLOCK)):
                stream.write(BLOCK)
                if source.resumed is not None:
                    await source.resumed
            await reached

        rounds = 0

        def one_round() -> None:
            nonlocal rounds
            loop.run_until_complete(asyncio.wait_for(transfer(), 60))
            rounds += 1

        benchmark.pedantic(one_round, rounds=10, iterations=1, warmup_rounds=2)
        throughput(ROUND_BYTES)
        benchmark.extra_info["MiB per round"] = ROUND_BYTES >> 20
        assert sink.received == ROUND_BYTES * rounds
    finally:
        client.abort()
        server.abort()
        listener.close()
        loop.run_until_complete(listener.wait_closed())
        loop.run_until_complete(asyncio.sleep(0.01))  # let the transports finish closing
        loop.close()


class NullTransport(asyncio.Transport):
    """Swallows what the session writes: the benchmark times frame dispatch alone."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, list_of_data) -> None:
        for data in list_of_data:
            self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def pause_reading(self) -> None:  # the session yields to the loop past its budgets
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


SMALL_FRAMES = 4096
SMALL_PAYLOAD = b"x" * 48


def test_small_data_frame_dispatch(benchmark, codec):
    """Per-frame cost of the receive path: header parse, stream lookup, window
    accounting, hand-off to the protocol (48-byte payloads, no sockets)."""
    loop = uvloop.new_event_loop()
    sink = Sink()

    async def make() -> Session:
        # The whole chunk in one call: the benchmark times dispatch, not the frame budget.
        config = Config(frame_budget=SMALL_FRAMES)
        session = Session(client=False, config=config, protocol_factory=lambda: sink, codec=codec)
        session.connection_made(NullTransport())
        return session

    session = loop.run_until_complete(make())
    try:
        header = codec.encode_header
        session.data_received(header(1, 1, 1, 0))  # the peer opens stream 1 (SYN)
        chunk = b"".join(
            header(0, 0, 1, len(SMALL_PAYLOAD)) + SMALL_PAYLOAD for _ in range(SMALL_FRAMES)
        )

        def one_round() -> None:
            session.data_received(chunk)
            loop.run_until_complete(asyncio.sleep(0))  # the flush of window updates

        benchmark.pedantic(one_round, rounds=200, iterations=1, warmup_rounds=5)
        benchmark.extra_info["frames per round"] = SMALL_FRAMES
        assert sink.received == SMALL_FRAMES * len(SMALL_PAYLOAD) * (200 + 5)
        assert not session.is_closed
    finally:
        session.abort()
        loop.close()
