"""One tenant must not hurt the others (issue 12): a peer that floods frames asking for
replies (SYN then RST, again and again) and never reads what it is sent.

The flooding peer is a raw socket on real loopback, with small kernel buffers on both ends
so that "the peer does not read" shows up after a few kilobytes instead of megabytes.
"""

from __future__ import annotations

import asyncio
import socket
from types import ModuleType

from yamux_helpers import SessionPair, frame

from ytun._const import FLAG_RST, FLAG_SYN, TYPE_WINDOW_UPDATE
from ytun.errors import PeerNotReadingError
from ytun.yamux import Config, Session

READ_BUDGET = 256 * 1024  # what ytun.yamux.session lets one session parse per turn

# The largest chunk asyncio and uvloop hand to data_received in one call.
READ_SIZE = 256 * 1024
PAIRS_PER_WRITE = 2048


def syn_rst_pairs(first_id: int, count: int) -> bytes:
    """``count`` streams opened and reset at once, each costing the session one ACK."""
    return b"".join(
        frame(TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id, 0)
        + frame(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)
        for stream_id in range(first_id, first_id + 2 * count, 2)
    )


class CountingSession(Session):
    """Counts the reads (and bytes) it is given, to show when it stops reading."""

    reads = 0
    parsed = 0

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        self.parsed += len(data)
        super().data_received(data)


class Flood:
    """A server session and a raw client that floods it and never reads."""

    def __init__(self, codec: ModuleType, config: Config) -> None:
        self.codec = codec
        self.config = config
        self.peak_held = 0  # transport buffer + control queue, sampled while flooding

    async def __aenter__(self) -> Flood:
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        self._listener = listener
        self.transport, self.session = await loop.create_connection(
            lambda: CountingSession(client=False, config=self.config, codec=self.codec),
            *listener.getsockname(),
        )
        self.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        self.peer, _ = await loop.sock_accept(listener)
        self.peer.setblocking(False)
        self.task = loop.create_task(self._flood())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, OSError):
            pass
        self.session.abort()
        self.peer.close()
        self._listener.close()

    def held(self) -> int:
        if self.transport.is_closing():
            return self.session.control_queue_bytes
        return self.transport.get_write_buffer_size() + self.session.control_queue_bytes

    async def _flood(self) -> None:
        loop = asyncio.get_running_loop()
        stream_id = 1
        while True:
            await loop.sock_sendall(self.peer, syn_rst_pairs(stream_id, PAIRS_PER_WRITE))
            stream_id += 2 * PAIRS_PER_WRITE
            self.peak_held = max(self.peak_held, self.held())
            if stream_id > 0xFFFF0000:
                return

    def bound(self) -> int:
        """What the session may hold: a full transport buffer, the replies to one read
        flushed on top of it, and the control queue's own limit."""
        return self.config.transport_write_high + READ_SIZE + self.config.max_control_queue


async def wait_until(condition, what: str, timeout: float = 20) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def test_flood_from_a_peer_that_never_reads_ends_in_go_away(codec):
    # With no frame budget one read's replies overflow the control queue at once. (With
    # the default budget the replies of one loop turn stay below half the queue, so the
    # session stops reading the peer instead: see the next test.)
    config = Config(
        transport_write_high=16 * 1024, max_control_queue=24 * 1024, frame_budget=1 << 30
    )
    async with Flood(codec, config) as flood:
        await asyncio.wait_for(flood.session.wait_closed(), 20)
        flood.peak_held = max(flood.peak_held, flood.held())
        assert isinstance(flood.session.error.__cause__, PeerNotReadingError)
        assert flood.transport.is_closing()
        assert flood.session.control_queue_bytes == 0
        assert flood.session.stream_count == 0
        assert flood.peak_held <= flood.bound()


async def test_flooded_session_stops_reading_and_other_sessions_keep_answering(codec):
    config = Config(transport_write_high=16 * 1024, max_control_queue=512 * 1024)
    async with SessionPair(codec=codec) as healthy, Flood(codec, config) as flood:
        await wait_until(lambda: flood.session._reading_paused, "the flood paused reading")
        reads = flood.session.reads
        for _ in range(20):
            await healthy.client.ping()
            await healthy.server.ping()
        # The healthy pings were answered while the flooded session read nothing more,
        # held its replies within bounds and stayed up for its honest streams.
        assert flood.session.reads == reads
        assert not flood.session.is_closed
        assert flood.session.control_queue_bytes <= config.max_control_queue
        assert max(flood.peak_held, flood.held()) <= flood.bound()
        assert not flood.task.done()  # the peer is still trying to flood


async def test_reading_resumes_once_the_peer_reads_again(codec):
    config = Config(transport_write_high=16 * 1024, max_control_queue=512 * 1024)
    async with Flood(codec, config) as flood:
        await wait_until(lambda: flood.session._reading_paused, "the flood paused reading")
        flood.task.cancel()
        loop = asyncio.get_running_loop()

        async def drain() -> None:
            while True:
                if not await loop.sock_recv(flood.peer, 65536):
                    return

        reader = loop.create_task(drain())
        await wait_until(flood.transport.is_reading, "reading resumed")
        await wait_until(lambda: flood.session.control_queue_bytes == 0, "replies flushed")
        assert not flood.session.is_closed
        reader.cancel()


class ReadingTransport(asyncio.Transport):
    """Records pause_reading/resume_reading, like a socket transport would honour them."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.pauses = 0

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def write(self, data: object) -> None:
        pass

    def writelines(self, data: object) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def test_one_session_parses_a_bounded_amount_per_loop_turn(codec):
    """uvloop reads a ready socket up to 32 times in one go (8 MiB): a session fed that
    fast (a flood of stream opens and resets costs microseconds per 24 bytes) must stop
    reading after about one read and let the loop go round, or every other session and
    timer waits behind it for seconds."""
    session = Session(client=False, codec=codec, protocol_factory=asyncio.Protocol)
    transport = ReadingTransport()
    session.connection_made(transport)
    read = syn_rst_pairs(1, READ_SIZE // 24)
    fed = 0
    while transport.reading:  # what libuv does while the socket has data
        session.data_received(read)
        fed += len(read)
        assert fed <= 32 * READ_SIZE, "the session never stopped reading"
    assert fed <= READ_BUDGET + READ_SIZE
    turns = 0
    while not transport.reading:  # the loop goes round (once per frame budget)...
        await asyncio.sleep(0)
        turns += 1
        assert turns <= 2 * READ_SIZE // 12 // Config().frame_budget + 3
    assert transport.pauses == 1  # ...and the session reads again
    session.abort()


async def test_a_read_of_tiny_frames_is_parsed_a_frame_budget_per_loop_turn(codec):
    """One 256 KiB read of SYN+RST pairs is ~21,000 frames (~75 ms of work): the session
    parses at most ``frame_budget`` of them per loop turn, keeps the rest, and reads the
    socket again only once all of it is parsed."""
    budget = 100
    opened: list[int] = []
    session = Session(
        client=False,
        codec=codec,
        config=Config(frame_budget=budget),
        protocol_factory=lambda: opened.append(1) or asyncio.Protocol(),
    )
    transport = ReadingTransport()
    session.connection_made(transport)
    pairs = 1000
    session.data_received(syn_rst_pairs(1, pairs))
    assert not transport.reading
    per_turn = [len(opened)]
    while not transport.reading:
        before = len(opened)
        await asyncio.sleep(0)
        per_turn.append(len(opened) - before)
        assert len(per_turn) <= 2 * pairs * 2 // budget + 5, "the rest was never parsed"
    assert len(opened) == pairs  # nothing lost, in order
    assert max(per_turn) <= budget // 2  # one stream = SYN + RST = two frames
    assert transport.pauses == 1
    assert session.stream_count == 0
    session.abort()


async def test_bytes_handed_over_while_the_rest_waits_follow_it(codec):
    """A transport taken over may deliver bytes while the session still holds the rest of
    an earlier read: they are parsed after it, never before."""
    opened: list[int] = []

    class Recording(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            opened.append(transport.get_extra_info("stream_id"))

    session = Session(
        client=False, codec=codec, config=Config(frame_budget=4), protocol_factory=Recording
    )
    transport = ReadingTransport()
    session.connection_made(transport)
    session.data_received(syn_rst_pairs(1, 10))
    session.data_received(syn_rst_pairs(21, 3))
    while not transport.reading:
        await asyncio.sleep(0)
    assert opened == list(range(1, 27, 2))
    session.abort()
