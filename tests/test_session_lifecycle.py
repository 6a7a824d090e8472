"""Stream lifecycle through a session: stream IDs, inbound SYN, opening without waiting
for the ACK, backlogs and limits, cancellation races. Numbers in the comments refer to the
conformance list in the yamux reference (section 11). Every test runs on both codecs
(``codec``) and both event loops."""

from __future__ import annotations

import asyncio

import pytest
from yamux_helpers import (
    ACK,
    DATA,
    FAST,
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
    is_ack,
    is_rst,
    lost,
    of_stream,
    open_raw,
    read_data,
    settle,
    until,
)

from ytun._const import INITIAL_WINDOW
from ytun.errors import (
    SessionClosedError,
    StreamLimitError,
    StreamOpenTimeoutError,
    StreamResetError,
    StreamsExhaustedError,
)
from ytun.yamux import accept_connection, open_connection
from ytun.yamux.stream import StreamState

# -- 8: stream IDs ---------------------------------------------------------------------


async def test_client_ids_are_odd_server_ids_even(codec):
    async with SessionPair(FAST, FAST, codec=codec) as pair:
        for side, other, expected in (
            (pair.client, pair.server, [1, 3, 5]),
            (pair.server, pair.client, [2, 4, 6]),
        ):
            for stream_id in expected:
                stream, _ = await side.open_stream(Probe)
                assert stream.stream_id == stream_id
                accepted, _ = await asyncio.wait_for(other.accept_stream(Probe), 5)
                assert accepted.stream_id == stream_id


@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
async def test_stream_ids_exhausted_session_stays_usable(codec, client):
    async with SessionPair(FAST, FAST, codec=codec) as pair:
        opener, acceptor = (pair.client, pair.server) if client else (pair.server, pair.client)
        last = 0xFFFF_FFFD if client else 0xFFFF_FFFC
        opener._mux._next_id = last - 2
        ids = []
        for _ in range(2):
            stream, probe = await opener.open_stream(Probe)
            ids.append(stream.stream_id)
        assert ids == [last - 2, last]
        with pytest.raises(StreamsExhaustedError):
            await opener.open_stream(Probe)
        with pytest.raises(StreamsExhaustedError):
            await opener.open_stream(Probe)
        # The last stream still works both ways and so does the session.
        accepted = [await asyncio.wait_for(acceptor.accept_stream(Probe), 5) for _ in ids]
        far_stream, far_probe = accepted[-1]
        assert far_stream.stream_id == last
        stream.write(b"ping")
        await until(lambda: far_probe.data == b"ping")
        far_stream.write(b"pong")
        await until(lambda: probe.data == b"pong")
        assert not opener.is_closed
        await asyncio.wait_for(opener.ping(), 5)
        # Inbound streams are still accepted on an exhausted session.
        stream_in, _ = await acceptor.open_stream(Probe)
        got, _ = await asyncio.wait_for(opener.accept_stream(Probe), 5)
        assert got.stream_id == stream_in.stream_id


# -- 9, 10, 11, 12, 16: inbound SYN ----------------------------------------------------


@pytest.mark.parametrize("delta", [0, 1000, 3 * 1024 * 1024])
async def test_syn_window_delta_is_additive(codec, delta):
    """9: SYN on a Window Update with delta d gives us a send window of 256 KiB + d."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        peer.send(frame(WINDOW, SYN, 1, delta))
        # 16: the ACK comes at once, before the application accepts anything.
        ack = await peer.read_frame()
        assert is_ack(ack, 1) and ack.length == 0 and not ack.flags & (SYN | FIN)
        stream, _ = await asyncio.wait_for(peer.session.accept_stream(Probe), 5)
        window = INITIAL_WINDOW + delta
        payload = bytes(range(256)) * ((window + 5000) // 256 + 1)
        stream.write(payload)
        data, _ = await read_data(peer, 1, window)
        assert data == payload[:window]
        assert not of_stream(await settle(peer), 1)  # nothing beyond the window
        peer.send(frame(WINDOW, 0, 1, 7))
        data, _ = await read_data(peer, 1, 7)
        assert data == payload[window : window + 7]
        assert not of_stream(await settle(peer), 1)


async def test_larger_receive_window_is_advertised_as_delta(codec):
    recv_window = 1024 * 1024
    async with RawPeer(
        session_is_client=False, config=fast(recv_window=recv_window), codec=codec
    ) as peer:
        peer.send(frame(WINDOW, SYN, 1, 0))
        ack = await peer.read_frame()
        assert is_ack(ack, 1) and ack.length == recv_window - INITIAL_WINDOW
        _, probe = await asyncio.wait_for(peer.session.accept_stream(lambda: Probe(paused=True)), 5)
        # The whole advertised window may be used at once.
        peer.send(frame(DATA, 0, 1, recv_window, b"w" * recv_window))
        assert not of_stream(await settle(peer), 1)
        assert not peer.session.is_closed
        probe.transport.resume_reading()
        await until(lambda: len(probe.data) == recv_window)

    async with SessionPair(fast(recv_window=recv_window), fast(), codec=codec) as pair:
        await pair.client.open_stream(Probe)
        far, _ = await asyncio.wait_for(pair.server.accept_stream(Probe), 5)
        assert far._window.send_credit == recv_window


@pytest.mark.parametrize("size", [1, INITIAL_WINDOW])
async def test_syn_on_data_within_initial_window(codec, size):
    """10: a SYN carried by a Data frame with up to 256 KiB of payload is accepted."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        payload = bytes(range(251)) * (size // 251 + 1)
        payload = payload[:size]
        peer.send(frame(DATA, SYN, 1, size, payload))
        assert is_ack(await peer.read_frame(), 1)
        _, probe = await asyncio.wait_for(peer.session.accept_stream(Probe), 5)
        await until(lambda: len(probe.data) == size)
        assert probe.data == payload
        assert not peer.session.is_closed


@pytest.mark.parametrize("recv_window", [INITIAL_WINDOW, 4 * INITIAL_WINDOW])
async def test_syn_on_data_beyond_initial_window_is_protocol_error(codec, recv_window):
    """10: the opener cannot have more than 256 KiB of credit before our ACK, whatever
    window we are about to advertise."""
    async with RawPeer(
        session_is_client=False, config=fast(recv_window=recv_window), codec=codec
    ) as peer:
        size = INITIAL_WINDOW + 1
        peer.send(frame(DATA, SYN, 1, size, b"x" * size))
        frames = await peer.read_until_closed()
        assert frames[-1].type == GO_AWAY and frames[-1].length == 1
        assert peer.session.is_closed


@pytest.mark.parametrize("via", ["window", "data"])
async def test_syn_fin_one_shot_request(codec, via):
    """11: SYN|FIN with payload: the accepted stream reads the payload, then EOF; our
    direction stays writable and closing it finishes the stream."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        if via == "data":
            peer.send(frame(DATA, SYN | FIN, 1, 7, b"request"))
        else:
            peer.send(frame(WINDOW, SYN | FIN, 1, 0))
        expected = b"request" if via == "data" else b""
        stream, probe = await asyncio.wait_for(peer.session.accept_stream(Probe), 5)
        await until(lambda: probe.eofs == 1)
        assert probe.data == expected
        stream.write(b"response")
        stream.close()
        frames = of_stream(await settle(peer), 1)
        assert is_ack(frames[0], 1)
        assert b"".join(f.payload for f in frames) == b"response"
        assert frames[-1].flags & FIN
        assert await lost(probe) is None
        assert peer.session.stream_count == 0
        assert probe.eofs == 1 and not probe.violations


async def test_syn_rst_is_ignored(codec):
    """12: SYN|RST opens nothing and sends nothing (no ACK, no RST back)."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        peer.send(frame(WINDOW, SYN | RST, 1, 0) + frame(DATA, SYN | RST, 3, 3, b"abc"))
        assert await settle(peer) == []
        assert peer.session.stream_count == 0
        # The session is fine and takes the next stream.
        await open_raw(peer, 5)


async def test_syn_then_rst_reports_reset(codec):
    """12: a stream opened and reset before the application accepts it is never handed
    out; with a protocol factory its protocol sees connection_lost(StreamResetError)."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        peer.send(
            frame(WINDOW, SYN, 1, 0) + frame(DATA, 0, 1, 3, b"abc") + frame(WINDOW, RST, 1, 0)
        )
        await settle(peer)
        assert peer.session.stream_count == 0
        assert not peer.session._mux.backlog
        await open_raw(peer, 3)  # accept_stream skips the dead stream

    probes: list[Probe] = []

    def factory() -> Probe:
        probes.append(Probe())
        return probes[-1]

    async with RawPeer(
        session_is_client=False, config=fast(), protocol_factory=factory, codec=codec
    ) as peer:
        peer.send(frame(WINDOW, SYN, 1, 0) + frame(WINDOW, RST, 1, 0))
        await until(lambda: probes)
        assert isinstance(await lost(probes[0]), StreamResetError)
        assert peer.session.stream_count == 0


# -- 14, 15: opening without waiting for the ACK, lazy peers ----------------------------


async def test_open_does_not_wait_for_ack(codec):
    """14: open returns at once, the SYN goes out eagerly, data may follow before the ACK,
    and a late ACK is handled."""
    async with RawPeer(session_is_client=True, config=fast(), codec=codec) as peer:
        session = peer.session
        stream, probe = await asyncio.wait_for(session.open_stream(Probe), 1)
        syn = await peer.read_frame()
        assert (syn.type, syn.flags, syn.stream_id, syn.length) == (WINDOW, SYN, 1, 0)
        stream.write(b"early")
        got = await peer.read_frame()
        assert (got.type, got.stream_id, got.payload) == (DATA, 1, b"early")
        assert not got.flags & SYN  # the SYN was already sent
        assert session._mux.unacked == 1
        peer.send(frame(WINDOW, ACK, 1, 0) + frame(DATA, 0, 1, 5, b"reply"))
        await until(lambda: probe.data == b"reply")
        assert session._mux.unacked == 0
        stream.write(b"more")
        assert (await peer.read_frame()).payload == b"more"


async def test_lazy_ack_on_first_data(codec):
    """15: a peer that acknowledges with its first Data frame (rust-yamux)."""
    async with RawPeer(session_is_client=True, config=fast(), codec=codec) as peer:
        stream, probe = await peer.session.open_stream(Probe)
        await peer.read_frame()  # SYN
        peer.send(frame(DATA, ACK, 1, 4, b"lazy"))
        await until(lambda: probe.data == b"lazy")
        assert peer.session._mux.unacked == 0 and stream.state is StreamState.ESTABLISHED


async def test_lazy_syn_on_first_data(codec):
    """15: a peer that opens with its first Data frame (rust-yamux)."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        peer.send(frame(DATA, SYN, 1, 5, b"hello") + frame(DATA, 0, 1, 6, b" world"))
        assert is_ack(await peer.read_frame(), 1)
        stream, probe = await asyncio.wait_for(peer.session.accept_stream(Probe), 5)
        await until(lambda: probe.data == b"hello world")
        stream.write(b"ok")
        assert (await peer.expect(DATA, 1)).payload == b"ok"


# -- 17, 18, 19, 20: backlogs and limits -----------------------------------------------


async def test_accept_backlog_overflow_resets_new_streams(codec):
    """17: beyond the accept backlog new streams get Window Update + RST; the reader keeps
    running and the streams already queued are unaffected."""
    async with RawPeer(session_is_client=False, config=fast(accept_backlog=2), codec=codec) as peer:
        peer.send(
            frame(DATA, SYN, 1, 3, b"one")
            + frame(DATA, SYN, 3, 3, b"two")
            + frame(DATA, SYN, 5, 5, b"three")
            + frame(DATA, 0, 5, 4, b"more")
        )
        frames = await settle(peer)
        assert [f for f in frames if f.stream_id == 5] == [Frame(WINDOW, RST, 5, 0)]
        assert is_ack(frames[0], 1) and is_ack(frames[1], 3)
        assert peer.session.stream_count == 2 and not peer.session.is_closed
        _, first = await asyncio.wait_for(peer.session.accept_stream(Probe), 5)
        # Room again: the next stream is accepted.
        peer.send(frame(WINDOW, SYN, 7, 0))
        assert is_ack((await settle(peer))[0], 7)
        _, second = await asyncio.wait_for(peer.session.accept_stream(Probe), 5)
        stream7, _ = await asyncio.wait_for(peer.session.accept_stream(Probe), 5)
        assert stream7.stream_id == 7
        await until(lambda: first.data == b"one" and second.data == b"two")


async def test_unacked_outbound_streams_are_bounded(codec):
    """18: with max_unacked_streams opens outstanding, the next open waits until an ACK
    (or a refusal) arrives; the SYN only goes out then."""
    async with RawPeer(
        session_is_client=True, config=fast(max_unacked_streams=3), codec=codec
    ) as peer:
        session = peer.session
        for _ in range(3):
            await asyncio.wait_for(session.open_stream(Probe), 1)
        waiting = asyncio.ensure_future(session.open_stream(Probe))
        frames = [await peer.read_frame() for _ in range(3)]
        assert [(f.type, f.flags, f.stream_id) for f in frames] == [
            (WINDOW, SYN, 1),
            (WINDOW, SYN, 3),
            (WINDOW, SYN, 5),
        ]
        done, _ = await asyncio.wait([waiting], timeout=0.05)
        assert not done
        assert session.stream_count == 3
        with pytest.raises(StreamLimitError):
            session.open_stream_nowait(Probe)
        peer.send(frame(WINDOW, ACK, 3, 0))
        stream, _ = await asyncio.wait_for(waiting, 5)
        assert stream.stream_id == 7
        assert (await peer.read_frame()).stream_id == 7
        # A refusal (RST) frees a slot as well.
        waiting = asyncio.ensure_future(session.open_stream(Probe))
        done, _ = await asyncio.wait([waiting], timeout=0.05)
        assert not done
        peer.send(frame(WINDOW, RST, 1, 0))
        stream, _ = await asyncio.wait_for(waiting, 5)
        assert stream.stream_id == 9
        assert session._mux.unacked == 3


async def test_unacked_slot_released_when_stream_is_reset_locally(codec):
    async with RawPeer(
        session_is_client=True, config=fast(max_unacked_streams=1), codec=codec
    ) as peer:
        stream, _ = await peer.session.open_stream(Probe)
        waiting = asyncio.ensure_future(peer.session.open_stream(Probe))
        await asyncio.sleep(0)
        assert not waiting.done()
        stream.reset()
        second, _ = await asyncio.wait_for(waiting, 5)
        assert second.stream_id == 3


async def test_stream_open_timeout_resets_the_stream(codec):
    """An opened stream the peer never acknowledges is reset after stream_open_timeout;
    only that stream, not the session."""
    async with RawPeer(
        session_is_client=True, config=fast(stream_open_timeout=0.2), codec=codec
    ) as peer:
        loop = asyncio.get_running_loop()
        started = loop.time()
        _, probe = await peer.session.open_stream(Probe)
        _, acked_probe = await peer.session.open_stream(Probe)
        peer.send(frame(WINDOW, ACK, 3, 0))
        assert isinstance(await lost(probe), StreamOpenTimeoutError)
        assert loop.time() - started >= 0.19
        frames = await settle(peer)
        assert any(is_rst(f, 1) for f in frames)
        assert not any(is_rst(f, 3) for f in frames)
        assert peer.session._mux.unacked == 0 and peer.session.stream_count == 1
        assert not acked_probe.lost.done() and not peer.session.is_closed


async def test_max_streams_resets_inbound_and_refuses_outbound(codec):
    """19: at the concurrent-stream cap an inbound SYN gets RST (no teardown) and a local
    open raises StreamLimitError."""
    async with RawPeer(session_is_client=False, config=fast(max_streams=2), codec=codec) as peer:
        await open_raw(peer, 1)
        await open_raw(peer, 3)
        peer.send(frame(WINDOW, SYN, 5, 0))
        assert of_stream(await settle(peer), 5) == [Frame(WINDOW, RST, 5, 0)]
        with pytest.raises(StreamLimitError):
            await peer.session.open_stream(Probe)
        assert peer.session.stream_count == 2 and not peer.session.is_closed
        # Once a stream is gone there is room again.
        peer.send(frame(WINDOW, RST, 1, 0))
        await open_raw(peer, 7)


async def test_local_go_away_refuses_new_streams(codec):
    """20: after go_away() inbound SYNs get RST; open streams carry on both ways."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        stream, probe = await open_raw(peer, 1)
        await settle(peer)
        peer.session.go_away()
        peer.session.go_away()  # idempotent: one Go Away only
        peer.send(
            frame(WINDOW, SYN, 3, 0) + frame(DATA, SYN, 5, 2, b"hi") + frame(DATA, 0, 1, 4, b"data")
        )
        frames = await settle(peer)
        assert [f for f in frames if f.type == GO_AWAY] == [Frame(GO_AWAY, 0, 0, 0)]
        assert of_stream(frames, 3) == [Frame(WINDOW, RST, 3, 0)]
        assert of_stream(frames, 5) == [Frame(WINDOW, RST, 5, 0)]
        await until(lambda: probe.data == b"data")
        stream.write(b"reply")
        assert (await peer.expect(DATA, 1)).payload == b"reply"
        with pytest.raises(SessionClosedError):
            await peer.session.open_stream(Probe)
        assert not peer.session.is_closed


# -- cancellation races ----------------------------------------------------------------


async def test_stream_handed_to_a_cancelled_acceptor_is_not_lost(codec):
    """An accept_stream call cancelled just after a stream was handed to it (a timeout
    firing in the same loop iteration) passes the stream on instead of leaking it."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        session = peer.session
        accepting = asyncio.ensure_future(session.accept_stream(Probe))
        await asyncio.sleep(0)
        session.data_received(frame(WINDOW, SYN, 1, 0) + frame(DATA, 0, 1, 2, b"hi"))
        accepting.cancel()  # the waiter already holds stream 1
        with pytest.raises(asyncio.CancelledError):
            await accepting
        stream, probe = await asyncio.wait_for(session.accept_stream(Probe), 1)
        assert stream.stream_id == 1
        await until(lambda: probe.data == b"hi")


async def test_cancelled_acceptors_do_not_accumulate(codec):
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        for _ in range(100):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(peer.session.accept_stream(Probe), 0.001)
        assert len(peer.session._accept_waiters) <= 1
        await open_raw(peer, 1)


async def test_wakeup_of_a_cancelled_opener_is_passed_on(codec):
    """An open_stream call cancelled just after it was woken for a free un-ACKed slot
    hands the wake-up to the next waiting opener."""
    async with RawPeer(
        session_is_client=True, config=fast(max_unacked_streams=1), codec=codec
    ) as peer:
        session = peer.session
        await session.open_stream(Probe)
        first = asyncio.ensure_future(session.open_stream(Probe))
        second = asyncio.ensure_future(session.open_stream(Probe))
        await asyncio.sleep(0)
        session.data_received(frame(WINDOW, ACK, 1, 0))
        first.cancel()  # already woken: the free slot must go to ``second``
        with pytest.raises(asyncio.CancelledError):
            await first
        stream, _ = await asyncio.wait_for(second, 1)
        assert stream.stream_id == 3
        for _ in range(100):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(session.open_stream(Probe), 0.001)
        assert len(session._unacked_waiters) <= 1


async def test_awaitable_reads_larger_than_the_buffer_limit(codec):
    """read() and readexactly() must drain what they buffer, or a paused peer never ends."""
    async with SessionPair(codec=codec) as pair:
        for size, reader in ((300_000, "read"), (700_000, "readexactly")):
            sender = await open_connection(pair.client)
            receiver_task = asyncio.ensure_future(accept_connection(pair.server, limit=65536))
            payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            sender.write(payload)
            sender.write_eof()
            receiver = await asyncio.wait_for(receiver_task, 5)
            if reader == "read":
                got = await asyncio.wait_for(receiver.read(), 10)
            else:
                got = await asyncio.wait_for(receiver.readexactly(size), 10)
            assert got == payload
