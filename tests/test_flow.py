"""Flow control and resources at session level: windows, backpressure both ways, frame
splitting, FIN ordering, bulk transfers, many streams, fairness and head-of-line
blocking. Numbers in the docstrings refer to the conformance list in the yamux
reference (section 11). Every test runs on both codecs (``codec``) and both loops."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest
from yamux_helpers import (
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    RST,
    SYN,
    WINDOW,
    Frame,
    Probe,
    RawPeer,
    SessionPair,
    fast,
    frame,
    lost,
    open_raw,
    read_data,
    settle,
    until,
)

from ytun._const import INITIAL_WINDOW, MAX_WINDOW
from ytun.errors import ProtocolError, SessionClosedError
from ytun.yamux import Config, StreamConnection, accept_connection, open_connection

HALF = INITIAL_WINDOW // 2


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking test data."""
    return random.Random(seed).randbytes(size)


def window_updates(frames: list[Frame], stream_id: int) -> list[int]:
    return [
        f.length
        for f in frames
        if f.type == WINDOW and f.stream_id == stream_id and not f.flags & (SYN | RST)
    ]


class Echo(asyncio.Protocol):
    """Echoes a stream and closes it after the peer's FIN."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        return False


async def serve(session, factory=Echo) -> asyncio.Task:
    async def loop() -> None:
        while True:
            await session.accept_stream(factory)

    return asyncio.ensure_future(loop())


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, SessionClosedError):
        pass


async def request(session, payload: bytes) -> bytes:
    conn = await open_connection(session)
    conn.write(payload)
    conn.write_eof()
    reply = await asyncio.wait_for(conn.read(), 10)
    await asyncio.wait_for(conn.wait_closed(), 10)
    return reply


def assert_idle(session) -> None:
    """Nothing left of finished streams anywhere in the session's state."""
    assert session.stream_count == 0
    assert not session._mux.has_output and not session._mux.backlog
    assert session._mux.unacked == 0 and not session._unacked_waiters
    assert not session._pings
    assert not session.is_closed


# -- 29, 32, 36: send window and frame size --------------------------------------------


async def test_send_window_limits_data_in_flight(codec):
    """29: at most 256 KiB of payload before the first Window Update, then exactly the
    credit granted; a zero-delta update (pure ACK) changes nothing."""
    async with RawPeer(session_is_client=True, config=fast(), codec=codec) as peer:
        stream, _ = await peer.session.open_stream(Probe)
        payload = pattern(1024 * 1024)
        stream.write(payload)
        data, frames = await read_data(peer, 1, INITIAL_WINDOW)
        assert frames[0] == Frame(WINDOW, SYN, 1, 0)
        assert data == payload[:INITIAL_WINDOW]
        assert not [f for f in await settle(peer) if f.type == DATA]
        assert stream._window.send_credit == 0
        peer.send(frame(WINDOW, ACK, 1, 0))
        assert not [f for f in await settle(peer) if f.type == DATA]
        peer.send(frame(WINDOW, 0, 1, 100))
        data, _ = await read_data(peer, 1, 100)
        assert data == payload[INITIAL_WINDOW : INITIAL_WINDOW + 100]
        assert not [f for f in await settle(peer) if f.type == DATA]
        assert stream.get_write_buffer_size() == len(payload) - INITIAL_WINDOW - 100


async def test_send_window_may_reach_but_not_pass_the_32_bit_limit(codec):
    """32: credit up to 2^32 - 1 is fine, one more is a protocol error."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        stream, probe = await open_raw(peer, 1)
        peer.send(frame(WINDOW, 0, 1, MAX_WINDOW - INITIAL_WINDOW))
        await settle(peer)
        assert stream._window.send_credit == MAX_WINDOW and not peer.session.is_closed
        peer.send(frame(WINDOW, 0, 1, 1))
        frames = await peer.read_until_closed()
        assert frames[-1] == Frame(GO_AWAY, 0, 0, 1)
        assert isinstance((await lost(probe)).__cause__, ProtocolError)


@pytest.mark.parametrize("max_payload", [1000, 16 * 1024, 64 * 1024])
async def test_data_frames_never_exceed_max_frame_payload(codec, max_payload):
    """36: outgoing Data is split at max_frame_payload, in order, whatever the writes."""
    async with RawPeer(
        session_is_client=True, config=fast(max_frame_payload=max_payload), codec=codec
    ) as peer:
        stream, _ = await peer.session.open_stream(Probe)
        payload = pattern(200_000, 1)
        for start, end in ((0, 1), (1, 150_001), (150_001, 150_500), (150_500, 200_000)):
            stream.write(payload[start:end])
        data, frames = await read_data(peer, 1, len(payload))
        sizes = [f.length for f in frames if f.type == DATA]
        assert max(sizes) == max_payload
        assert all(0 < size <= max_payload for size in sizes)
        assert data == payload


def test_max_frame_payload_above_one_mebibyte_is_refused():
    with pytest.raises(ValueError):
        Config(max_frame_payload=1024 * 1024 + 1)
    assert Config().max_frame_payload <= 1024 * 1024


# -- 30, 31: receive window ------------------------------------------------------------


async def test_data_beyond_receive_window_is_protocol_error(codec):
    """30: a reader that does not read grants nothing more; the peer may fill the window
    exactly, one byte more is a protocol error (Go Away 1)."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        stream, probe = await open_raw(peer, 1, paused=True)
        for _ in range(4):
            peer.send(frame(DATA, 0, 1, INITIAL_WINDOW // 4, b"f" * (INITIAL_WINDOW // 4)))
        assert await settle(peer) == [Frame(WINDOW, ACK, 1, 0)]
        assert stream._window.recv_credit == 0 and not peer.session.is_closed
        peer.send(frame(DATA, 0, 1, 1, b"!"))
        frames = await peer.read_until_closed()
        assert frames == [Frame(GO_AWAY, 0, 0, 1)]
        exc = await lost(probe)
        assert isinstance(exc, SessionClosedError) and isinstance(exc.__cause__, ProtocolError)


async def test_window_update_only_after_half_is_consumed(codec):
    """31: no Window Update while the application does not read; updates only once half
    the window is reclaimable; the credit is exact after odd-sized reads (the peer can
    then send exactly its computed window and not one byte more)."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        stream, probe = await open_raw(peer, 1, paused=True)
        await settle(peer)
        sent = 0
        credited = 0

        async def send(size: int) -> list[int]:
            nonlocal sent, credited
            peer.send(frame(DATA, 0, 1, size, b"d" * size))
            sent += size
            updates = window_updates(await settle(peer), 1)
            credited += sum(updates)
            return updates

        assert await send(200_000) == []  # not reading: no update at all
        probe.transport.resume_reading()
        updates = window_updates(await settle(peer), 1)
        credited += sum(updates)
        assert updates == [200_000]
        assert await send(100_000) == []
        assert await send(HALF - 100_000 - 1) == []
        assert await send(1) == [HALF]  # exactly half: the whole amount at once
        for size in (1, 7, 4093, 65_536, 3, 131_000, 99, 12_345, 77_777, 65_535):
            for update in await send(size):
                assert update >= HALF
            assert 0 <= sent - credited < HALF  # consumed but not yet credited
        assert len(probe.data) == sent
        # The peer's window is exactly what it was told: fill it, then overflow it.
        probe.transport.pause_reading()
        window = INITIAL_WINDOW - (sent - credited)
        assert stream._window.recv_credit == window
        peer.send(frame(DATA, 0, 1, window, b"w" * window))
        assert window_updates(await settle(peer), 1) == []
        assert not peer.session.is_closed
        peer.send(frame(DATA, 0, 1, 1, b"!"))
        assert (await peer.read_until_closed())[-1] == Frame(GO_AWAY, 0, 0, 1)


# -- backpressure both ways ------------------------------------------------------------


async def test_exhausted_peer_window_pauses_the_protocol(codec):
    """An exhausted send window keeps data queued and pauses the attached protocol at
    the high-water mark; credit from the peer drains it and resumes the protocol."""
    config = fast(stream_write_high=64 * 1024, stream_write_low=16 * 1024)
    async with RawPeer(session_is_client=True, config=config, codec=codec) as peer:
        stream, probe = await peer.session.open_stream(Probe)
        payload = pattern(INITIAL_WINDOW + 100_000, 2)
        for start in range(0, len(payload), 10_000):
            stream.write(payload[start : start + 10_000])
        assert probe.pauses == 1
        data, _ = await read_data(peer, 1, INITIAL_WINDOW)
        await settle(peer)
        assert (probe.pauses, probe.resumes) == (1, 0)
        assert stream.get_write_buffer_size() == 100_000
        peer.send(frame(WINDOW, 0, 1, 60_000))
        more, _ = await read_data(peer, 1, 60_000)
        await settle(peer)
        assert probe.resumes == 0  # 40 000 bytes left: above the low-water mark
        peer.send(frame(WINDOW, 0, 1, 1024 * 1024))
        rest, _ = await read_data(peer, 1, 40_000)
        await until(lambda: probe.resumes == 1)
        assert data + more + rest == payload
        assert stream.get_write_buffer_size() == 0 and probe.pauses == 1


async def test_paused_reader_stops_the_peer(codec):
    """A protocol that pauses reading grants no window: the peer stops after 256 KiB and
    its own protocol is paused; resuming delivers everything intact."""
    config = fast(stream_write_high=64 * 1024, stream_write_low=16 * 1024)
    async with SessionPair(config, config, codec=codec) as pair:
        stream, writer = await pair.client.open_stream(Probe)
        far_stream, reader = await asyncio.wait_for(
            pair.server.accept_stream(lambda: Probe(paused=True)), 5
        )
        payload = pattern(1024 * 1024, 3)
        stream.write(payload)
        await until(lambda: far_stream._window.buffered == INITIAL_WINDOW)
        for _ in range(2):
            await asyncio.wait_for(pair.client.ping(), 5)
            await asyncio.wait_for(pair.server.ping(), 5)
        assert stream._window.send_credit == 0
        assert stream.get_write_buffer_size() == len(payload) - INITIAL_WINDOW
        assert far_stream._window.recv_credit == 0
        assert reader.data == b"" and writer.pauses == 1 and writer.resumes == 0
        far_stream.resume_reading()
        await until(lambda: len(reader.data) == len(payload))
        assert reader.data == payload
        await until(lambda: writer.resumes == 1)


async def test_fin_never_overtakes_queued_data(codec):
    """28: close() with data still waiting for window: the FIN follows the last byte."""
    async with RawPeer(session_is_client=True, config=fast(), codec=codec) as peer:
        stream, _ = await peer.session.open_stream(Probe)
        payload = pattern(INITIAL_WINDOW + 50_000, 4)
        stream.write(payload)
        stream.write_eof()
        data, frames = await read_data(peer, 1, INITIAL_WINDOW)
        frames += await settle(peer)
        assert not [f for f in frames if f.flags & FIN]
        peer.send(frame(WINDOW, 0, 1, 20_000))
        more, frames = await read_data(peer, 1, 20_000)
        frames += await settle(peer)
        assert not [f for f in frames if f.flags & FIN]
        peer.send(frame(WINDOW, 0, 1, 1024 * 1024))
        rest, frames = await read_data(peer, 1, 30_000)
        frames += await settle(peer)
        assert data + more + rest == payload
        # The FIN comes last, alone in a Window Update: hashicorp/yamux acts on a Data
        # frame's FIN before buffering its payload, and its reader may lose the data.
        assert [f for f in frames if f.flags & FIN] == [Frame(WINDOW, FIN, 1, 0)]
        assert frames[-1] == Frame(WINDOW, FIN, 1, 0)


# -- 33, 35: transfers ----------------------------------------------------------------


async def test_bulk_transfer_both_directions_with_checksums(codec):
    """33 (scaled down to 32 MiB each way): both directions at once on one stream,
    random write and read sizes, SHA-256 of both streams compared."""
    size = 32 * 1024 * 1024
    async with SessionPair(fast(), fast(), codec=codec) as pair:
        near = await open_connection(pair.client)
        far = await asyncio.wait_for(accept_connection(pair.server), 5)

        async def send(conn: StreamConnection, seed: int) -> str:
            rng = random.Random(seed)
            digest = hashlib.sha256()
            remaining = size
            while remaining:
                chunk = rng.randbytes(min(remaining, rng.randint(1, 200_000)))
                digest.update(chunk)
                conn.write(chunk)
                remaining -= len(chunk)
                await conn.drain()
            conn.write_eof()
            return digest.hexdigest()

        async def receive(conn: StreamConnection, seed: int) -> str:
            rng = random.Random(seed)
            digest = hashlib.sha256()
            received = 0
            while True:
                chunk = await conn.read(rng.choice((1, 100, 4096, 65_537, 1 << 20)))
                if not chunk:
                    break
                digest.update(chunk)
                received += len(chunk)
            assert received == size
            return digest.hexdigest()

        sent_up, sent_down, got_up, got_down = await asyncio.wait_for(
            asyncio.gather(send(near, 1), send(far, 2), receive(far, 3), receive(near, 4)), 30
        )
        assert (got_up, got_down) == (sent_up, sent_down)
        await asyncio.wait_for(asyncio.gather(near.wait_closed(), far.wait_closed()), 5)
        assert pair.client.stream_count == pair.server.stream_count == 0


async def test_stalled_stream_does_not_stall_the_session(codec):
    """35: both ends write more than a window without reading: that stream stalls with
    memory bounded by the windows; pings and other streams keep working."""
    async with SessionPair(fast(), fast(), codec=codec) as pair:
        near, near_probe = await pair.client.open_stream(lambda: Probe(paused=True))
        far, far_probe = await asyncio.wait_for(
            pair.server.accept_stream(lambda: Probe(paused=True)), 5
        )
        near.write(pattern(1024 * 1024, 5))
        far.write(pattern(1024 * 1024, 6))
        await until(lambda: near._window.buffered == far._window.buffered == INITIAL_WINDOW)
        echo = await serve(pair.server)
        try:
            for i in range(20):
                assert await request(pair.client, b"rpc %d" % i) == b"rpc %d" % i
            await asyncio.wait_for(pair.client.ping(), 5)
            await asyncio.wait_for(pair.server.ping(), 5)
        finally:
            await stop(echo)
        assert near._window.buffered == far._window.buffered == INITIAL_WINDOW
        assert near._window.send_credit == far._window.send_credit == 0
        assert near_probe.data == far_probe.data == b""


# -- 47: many streams ------------------------------------------------------------------


async def test_thousand_concurrent_streams(codec):
    """47: 1,000 concurrent request/response streams (beyond the 256 un-ACKed limit)."""
    config = fast(accept_backlog=2048)
    async with SessionPair(fast(), config, codec=codec) as pair:
        echo = await serve(pair.server)
        try:
            payloads = [b"%d:" % i + pattern(i % 700, i) for i in range(1000)]
            replies = await asyncio.wait_for(
                asyncio.gather(*(request(pair.client, payload) for payload in payloads)), 30
            )
            assert replies == payloads
        finally:
            await stop(echo)
        await until(lambda: pair.server.stream_count == 0)
        assert_idle(pair.client)
        assert_idle(pair.server)


async def test_sequential_streams_leave_no_state(codec):
    """22, 47: 10,000 sequential open/echo/close cycles; FIN both ways removes each
    stream, and nothing accumulates."""
    async with SessionPair(fast(), fast(), codec=codec) as pair:
        echo = await serve(pair.server)
        try:
            for i in range(10_000):
                payload = b"%d" % i
                assert await request(pair.client, payload) == payload
                if i % 2500 == 0:
                    assert pair.client.stream_count == 0
        finally:
            await stop(echo)
        await until(lambda: pair.server.stream_count == 0)
        assert_idle(pair.client)
        assert_idle(pair.server)
        assert pair.client._mux._next_id == 1 + 2 * 10_000


# -- 48, 49, 50: fairness, transport backpressure, head-of-line blocking -----------------


async def test_bulk_stream_does_not_monopolise_a_flush(codec):
    """48: frames queued in the same loop iteration are interleaved, so a small write
    waits behind at most about one frame per active stream, not behind a whole window."""
    async with RawPeer(session_is_client=True, config=fast(), codec=codec) as peer:
        bulk, _ = await peer.session.open_stream(Probe)
        rpc, _ = await peer.session.open_stream(Probe)
        peer.send(frame(WINDOW, ACK, 1, 8 * 1024 * 1024) + frame(WINDOW, ACK, 3, 0))
        await settle(peer)
        bulk.write(pattern(4 * 1024 * 1024, 7))
        rpc.write(b"small request")
        before = 0
        while True:
            got = await peer.read_frame()
            if got.stream_id == 3:
                assert got.payload == b"small request"
                break
            before += len(got.payload)
        assert before <= peer.session.config.max_frame_payload


async def test_transport_backpressure_pauses_stream_writers(codec):
    """49: when the connection's write buffer is full, stream data stays queued, the
    stream's writer is paused (drain waits) and memory stays bounded; everything
    arrives once the peer reads again."""
    config = fast(
        transport_write_high=64 * 1024, stream_write_high=128 * 1024, stream_write_low=32 * 1024
    )
    async with RawPeer(session_is_client=True, config=config, codec=codec) as peer:
        session = peer.session
        conn = await open_connection(session)
        peer.send(frame(WINDOW, ACK, 1, MAX_WINDOW - INITIAL_WINDOW))
        await until(lambda: conn.stream._window.send_credit == MAX_WINDOW)
        chunk = pattern(64 * 1024, 8)
        digest = hashlib.sha256()
        written = 0
        # The peer does not read: kernel buffers fill, then the transport pauses us.
        while not (session._writing_paused and conn._paused):
            assert written < 512 * 1024 * 1024, "the transport never pushed back"
            conn.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            await asyncio.sleep(0)
        transport = session._transport
        assert transport.get_write_buffer_size() <= 64 * 1024 + 3 * len(chunk)
        assert conn.stream.get_write_buffer_size() <= 128 * 1024 + len(chunk)
        draining = asyncio.ensure_future(conn.drain())
        done, _ = await asyncio.wait([draining], timeout=0.05)
        assert not done  # the writer waits
        # Control frames are not stuck behind the paused data path.
        assert not session.is_closed

        async def read_all() -> str:
            received = hashlib.sha256()
            total = 0
            while True:
                got = await peer.read_frame()
                if got.type == DATA:
                    received.update(got.payload)
                    total += len(got.payload)
                if got.flags & FIN:
                    assert total == written
                    return received.hexdigest()

        reading = asyncio.ensure_future(read_all())
        await asyncio.wait_for(draining, 10)
        last = pattern(1000, 9)
        conn.write(last)
        digest.update(last)
        written += len(last)
        conn.write_eof()
        assert await asyncio.wait_for(reading, 20) == digest.hexdigest()


async def test_unread_stream_does_not_delay_others(codec):
    """50: a stream whose consumer never reads does not block other streams."""
    async with SessionPair(fast(), fast(), codec=codec) as pair:
        stuck, stuck_probe = await pair.client.open_stream(Probe)
        far, far_probe = await asyncio.wait_for(
            pair.server.accept_stream(lambda: Probe(paused=True)), 5
        )
        stuck.write(pattern(4 * 1024 * 1024, 10))
        await until(lambda: far._window.buffered == INITIAL_WINDOW)
        echo = await serve(pair.server)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            replies = await asyncio.wait_for(
                asyncio.gather(*(request(pair.client, b"req %d" % i) for i in range(50))), 10
            )
            assert replies == [b"req %d" % i for i in range(50)]
            assert loop.time() - started < 5
        finally:
            await stop(echo)
        assert far_probe.data == b"" and not stuck_probe.lost.done()
        assert stuck.get_write_buffer_size() == 4 * 1024 * 1024 - INITIAL_WINDOW
