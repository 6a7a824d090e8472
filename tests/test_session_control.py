"""Session-level frames: ping, keepalive, Go Away and termination, protocol errors.
Numbers refer to the conformance list in the yamux reference (section 11). Every test runs
on both codecs and both event loops."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from yamux_helpers import (
    ACK,
    DATA,
    FAST,
    FIN,
    GO_AWAY,
    HEADER,
    PING,
    SYN,
    WINDOW,
    Frame,
    Probe,
    RawPeer,
    SessionPair,
    fast,
    frame,
    lost,
    of_stream,
    open_raw,
    open_raw_connection,
    read_data,
    settle,
    until,
)

from ytun._const import INITIAL_WINDOW
from ytun.errors import (
    GoAwayError,
    KeepaliveTimeoutError,
    ProtocolError,
    SessionClosedError,
)
from ytun.yamux import StreamConnection, accept_connection, open_connection
from ytun.yamux import stream as stream_module

# -- 37, 38, 39, 41: ping --------------------------------------------------------------


async def test_ping_is_answered_with_the_same_value(codec):
    """37 and 41: a ping as the very first frame is answered: Ping + ACK, stream 0, same
    opaque value, for values across the whole 32-bit range."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        for value in (0xDEADBEEF, 0, 1, 0xFFFFFFFF):
            peer.send(frame(PING, SYN, 0, value))
            assert await peer.read_frame() == Frame(PING, ACK, 0, value)


async def test_ping_answered_promptly_under_bulk_load(codec):
    """37: a ping round trip completes while a stream moves bulk data both ways."""
    async with SessionPair(FAST, FAST, codec=codec) as pair:
        sender = await open_connection(pair.client)
        receiver = await asyncio.wait_for(accept_connection(pair.server), 5)
        chunk = b"b" * 65536
        stop = asyncio.Event()

        async def pump(conn: StreamConnection) -> None:
            while not stop.is_set():
                conn.write(chunk)
                await conn.drain()

        async def sink(conn: StreamConnection) -> int:
            total = 0
            while not stop.is_set():
                total += len(await conn.read(1 << 20))
            return total

        tasks = [
            asyncio.ensure_future(c)
            for c in (pump(sender), pump(receiver), sink(sender), sink(receiver))
        ]
        await asyncio.sleep(0.05)
        try:
            for _ in range(5):
                rtt = await asyncio.wait_for(pair.client.ping(), 2)
                assert rtt < 1.0
                await asyncio.wait_for(pair.server.ping(), 2)
        finally:
            stop.set()
            sender.reset()
            receiver.reset()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)


async def test_ping_flood_both_ways(codec):
    """38: 10,000 concurrent pings from each side complete without deadlock."""
    config = fast(pong_backlog=20_000, ping_timeout=5)
    async with SessionPair(config, config, codec=codec) as pair:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(pair.client.ping() for _ in range(10_000)),
                *(pair.server.ping() for _ in range(10_000)),
            ),
            20,
        )
        assert len(results) == 20_000 and all(rtt >= 0 for rtt in results)
        assert not pair.client._pings and not pair.server._pings


async def test_pong_backlog_is_bounded(codec):
    """38: pongs beyond pong_backlog per flush are dropped, not queued without bound;
    the session keeps answering later pings."""
    async with RawPeer(session_is_client=False, config=fast(pong_backlog=8), codec=codec) as peer:
        peer.send(b"".join(frame(PING, SYN, 0, value) for value in range(1, 1001)))
        answered = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        sentinel = 0x6000_0000
        while loop.time() < deadline:
            sentinel += 1
            peer.send(frame(PING, SYN, 0, sentinel))
            try:
                while True:
                    got = await peer.read_frame(timeout=0.2)
                    assert got.type == PING and got.flags == ACK
                    if got.length == sentinel:
                        break
                    if got.length < 0x6000_0000:
                        answered.append(got.length)
                break
            except asyncio.TimeoutError:
                continue  # the sentinel fell into a full batch; try again
        else:
            raise AssertionError("no answer to a later ping")
        assert 8 <= len(answered) < 1000
        assert answered == sorted(set(answered))
        assert not peer.session.is_closed


async def test_unknown_pong_is_ignored(codec):
    """39: a pong we did not ask for changes nothing and is never answered; a pong with
    the wrong value does not complete our ping."""
    async with RawPeer(session_is_client=False, config=fast(ping_timeout=0.2), codec=codec) as peer:
        peer.send(frame(PING, ACK, 0, 12345) + frame(PING, 0, 0, 777))
        assert await settle(peer) == []
        pinging = asyncio.ensure_future(peer.session.ping())
        request = await peer.read_frame()
        assert request.type == PING and request.flags == SYN and request.stream_id == 0
        peer.send(frame(PING, ACK, 0, request.length + 1))
        with pytest.raises(KeepaliveTimeoutError):
            await asyncio.wait_for(pinging, 5)
        assert not peer.session.is_closed
        assert not peer.session._pings
        pinging = asyncio.ensure_future(peer.session.ping())
        request = await peer.read_frame()
        peer.send(frame(PING, ACK, 0, request.length))
        assert await asyncio.wait_for(pinging, 5) >= 0


# -- 40: keepalive ---------------------------------------------------------------------


async def test_keepalive_timeout_fails_the_session(codec):
    """40: the client pings after keepalive_interval of silence and fails with
    KeepaliveTimeoutError when no pong comes within ping_timeout; streams are told."""
    config = fast(keepalive_interval=0.2, ping_timeout=0.2)
    async with RawPeer(session_is_client=True, config=config, codec=codec) as peer:
        loop = asyncio.get_running_loop()
        started = loop.time()
        _, probe = await peer.session.open_stream(Probe)
        assert (await peer.read_frame()).flags == SYN
        ping = await peer.read_frame(timeout=2)
        assert ping.type == PING and ping.flags == SYN and ping.stream_id == 0
        assert loop.time() - started >= 0.18
        exc = await lost(probe)
        assert isinstance(exc, KeepaliveTimeoutError)
        assert 0.35 <= loop.time() - started < 2
        assert peer.session.is_closed
        assert await peer.read_until_closed() == []
        await asyncio.wait_for(peer.session.wait_closed(), 1)
        with pytest.raises(SessionClosedError):
            await peer.session.open_stream(Probe)


async def test_no_keepalive_ping_while_frames_arrive(codec):
    """40: no keepalive pings while the peer keeps talking; one follows its silence."""
    config = fast(keepalive_interval=0.1, ping_timeout=0.5)
    async with RawPeer(session_is_client=True, config=config, codec=codec) as peer:
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.5
        while loop.time() < end:
            peer.send(frame(WINDOW, 0, 1000, 1))  # ignored: unknown stream
            await asyncio.sleep(0.03)
        frames = await settle(peer)
        assert not [f for f in frames if f.type == PING]
        ping = await peer.read_frame(timeout=2)
        assert ping.type == PING and ping.flags == SYN
        peer.send(frame(PING, ACK, 0, ping.length))
        await asyncio.sleep(0.05)
        assert not peer.session.is_closed


async def test_answered_keepalive_pings_do_not_multiply(codec):
    """40: with every ping answered, the client sends one keepalive ping per interval,
    never several at once."""
    config = fast(keepalive_interval=0.05, ping_timeout=1)
    async with RawPeer(session_is_client=True, config=config, codec=codec) as peer:
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.6
        pings = 0
        while True:
            try:
                got = await peer.read_frame(timeout=max(0.001, end - loop.time()))
            except asyncio.TimeoutError:
                break
            assert got.type == PING and got.flags == SYN
            pings += 1
            peer.send(frame(PING, ACK, 0, got.length))
        assert 3 <= pings <= 14
        assert not peer.session.is_closed


async def test_server_sends_nothing_before_the_first_frame(codec):
    """A server-role session stays silent (no keepalive) until the client spoke."""
    config = fast(keepalive_interval=0.05, ping_timeout=1)
    async with RawPeer(session_is_client=False, config=config, codec=codec) as peer:
        with pytest.raises(asyncio.TimeoutError):
            await peer.read_frame(timeout=0.25)
        peer.send(frame(WINDOW, 0, 1001, 1))  # any frame wakes the keepalive
        ping = await peer.read_frame(timeout=2)
        assert ping.type == PING and ping.flags == SYN
        peer.send(frame(PING, ACK, 0, ping.length))
        ping = await peer.read_frame(timeout=2)
        assert ping.type == PING and ping.flags == SYN


# -- 42, 43, 44, 45, 46: Go Away and termination ---------------------------------------


async def test_remote_go_away_normal_stops_new_opens_only(codec):
    """42: Go Away(0): open_stream raises GoAwayError, existing streams keep working,
    inbound streams are still accepted."""
    async with RawPeer(session_is_client=True, config=fast(), codec=codec) as peer:
        stream, probe = await peer.session.open_stream(Probe)
        peer.send(frame(WINDOW, ACK, 1, 0) + frame(GO_AWAY, 0, 0, 0))
        await settle(peer)
        with pytest.raises(GoAwayError) as info:
            await peer.session.open_stream(Probe)
        assert info.value.code == 0
        stream.write(b"still")
        assert (await peer.expect(DATA, 1)).payload == b"still"
        peer.send(frame(DATA, 0, 1, 4, b"here"))
        await until(lambda: probe.data == b"here")
        assert not peer.session.is_closed and not probe.lost.done()
        peer.send(frame(WINDOW, SYN, 2, 0))
        accepted, _ = await asyncio.wait_for(peer.session.accept_stream(Probe), 5)
        assert accepted.stream_id == 2


@pytest.mark.parametrize("code", [1, 2, 4101])
async def test_remote_go_away_error_terminates(codec, code):
    """43: Go Away with any other code ends the session; every stream and waiter fails
    with GoAwayError carrying the code; we send nothing back."""
    async with RawPeer(session_is_client=True, config=fast(), codec=codec) as peer:
        _, probe = await peer.session.open_stream(Probe)
        accepting = asyncio.ensure_future(peer.session.accept_stream(Probe))
        await asyncio.sleep(0)
        peer.send(frame(GO_AWAY, 0, 0, code))
        exc = await lost(probe)
        assert isinstance(exc, GoAwayError) and exc.code == code
        with pytest.raises(SessionClosedError):
            await asyncio.wait_for(accepting, 5)
        frames = await peer.read_until_closed()
        assert [f.type for f in frames] == [WINDOW]  # only the SYN
        assert peer.session.is_closed
        with pytest.raises(SessionClosedError):
            await peer.session.open_stream(Probe)
        await asyncio.wait_for(peer.session.wait_closed(), 1)


async def test_graceful_close_flushes_then_sends_go_away(codec):
    """44: close() sends the frames already queued, then Go Away(0), then closes; it is
    idempotent and safe to call again from a callback it triggers."""
    async with RawPeer(session_is_client=True, config=fast(), codec=codec) as peer:
        session = peer.session
        stream, probe = await session.open_stream(Probe)
        payload = bytes(range(256)) * 400
        stream.write(payload)
        lost_calls = []

        class Reentrant(Probe):
            def connection_lost(self, exc):
                session.close()
                lost_calls.append(exc)
                super().connection_lost(exc)

        await session.open_stream(Reentrant)
        session.close()
        session.close()
        frames = await peer.read_until_closed()
        assert frames[-1] == Frame(GO_AWAY, 0, 0, 0)
        assert [f for f in frames if f.type == GO_AWAY] == [frames[-1]]
        assert b"".join(f.payload for f in of_stream(frames, 1)) == payload
        assert isinstance(await lost(probe), SessionClosedError)
        await until(lambda: len(lost_calls) == 1)
        await asyncio.wait_for(session.wait_closed(), 1)
        session.close()
        session.abort()
        assert session.is_closed and session.stream_count == 0
        stream.write(b"after close")  # ignored, like a closed asyncio transport


@pytest.mark.parametrize("how", ["clean", "mid-header", "mid-body", "reset"])
async def test_transport_loss_fails_every_stream(codec, how):
    """45: EOF or reset of the connection, also in the middle of a frame: every stream
    and waiter fails, nothing hangs."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        first = await open_raw_connection(peer, 1)
        second = await open_raw_connection(peer, 3)
        reading = asyncio.ensure_future(first.read())
        accepting = asyncio.ensure_future(peer.session.accept_stream(Probe))
        await settle(peer)
        if how == "mid-header":
            peer.send(frame(DATA, 0, 3, 10, b"0123456789")[:7])
        elif how == "mid-body":
            peer.send(frame(DATA, 0, 3, 10, b"0123456789")[:15])
        await peer.writer.drain()
        if how == "reset":
            sock = peer.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.writer.transport.abort()
        else:
            peer.writer.close()
        with pytest.raises(SessionClosedError):
            await asyncio.wait_for(reading, 5)
        with pytest.raises(SessionClosedError):
            await asyncio.wait_for(second.read(), 5)
        with pytest.raises(SessionClosedError):
            await asyncio.wait_for(accepting, 5)
        await asyncio.wait_for(peer.session.wait_closed(), 5)
        assert peer.session.is_closed and peer.session.stream_count == 0


@pytest.mark.parametrize("how", ["close", "abort", "go-away-2", "eof"])
async def test_termination_wakes_every_waiter(codec, how):
    """46: closing wakes readers, writers blocked on window, acceptors, openers blocked
    on the ACK backlog and pingers, all with SessionClosedError."""
    config = fast(
        max_unacked_streams=1,
        stream_write_high=16 * 1024,
        stream_write_low=4 * 1024,
        ping_timeout=10,
    )
    async with RawPeer(session_is_client=True, config=config, codec=codec) as peer:
        session = peer.session
        conn = await open_connection(session)
        conn.write(b"x" * (INITIAL_WINDOW + 64 * 1024))
        waiters = {
            "read": asyncio.ensure_future(conn.read(1)),
            "drain": asyncio.ensure_future(conn.drain()),
            "accept": asyncio.ensure_future(session.accept_stream(Probe)),
            "open": asyncio.ensure_future(session.open_stream(Probe)),
            "ping": asyncio.ensure_future(session.ping()),
        }
        await read_data(peer, 1, INITIAL_WINDOW)
        assert not any(w.done() for w in waiters.values())
        if how == "close":
            session.close()
        elif how == "abort":
            session.abort()
        elif how == "go-away-2":
            peer.send(frame(GO_AWAY, 0, 0, 2))
        else:
            peer.writer.close()
        for waiter in waiters.values():
            with pytest.raises(SessionClosedError):
                await asyncio.wait_for(waiter, 5)
        assert session.stream_count == 0
        assert not session._unacked_waiters and not session._accept_waiters


# -- protocol errors: Go Away(1), close, every stream told -------------------------------


PROTOCOL_ERRORS = {
    "bad-version": (HEADER.pack(1, DATA, 0, 1, 0), {}),
    "unknown-type": (frame(4, 0, 1, 0), {}),
    "type-255": (frame(255, 0, 0, 0), {}),
    "body-over-cap": (frame(DATA, 0, 1, 4096), {"max_recv_payload": 1024}),
    "duplicate-syn": (frame(WINDOW, SYN, 1, 0), {}),
    "duplicate-syn-on-data": (frame(DATA, SYN, 1, 1, b"x"), {}),
    "syn-our-parity": (frame(WINDOW, SYN, 2, 0), {}),
    "syn-stream-0": (frame(WINDOW, SYN, 0, 0), {}),
    "data-stream-0": (frame(DATA, 0, 0, 0), {}),
    "ping-on-stream": (frame(PING, SYN, 3, 1), {}),
    "go-away-on-stream": (frame(GO_AWAY, 0, 5, 0), {}),
    "window-overflow": (frame(WINDOW, 0, 1, 0xFFFFFFFF), {}),
    "data-over-window": (frame(DATA, 0, 1, INITIAL_WINDOW + 1, b"x" * (INITIAL_WINDOW + 1)), {}),
    "syn-data-over-window": (
        frame(DATA, SYN, 3, INITIAL_WINDOW + 1, b"x" * (INITIAL_WINDOW + 1)),
        {},
    ),
}


@pytest.mark.parametrize("name", list(PROTOCOL_ERRORS))
async def test_protocol_error_sends_go_away_1_and_fails_every_stream(codec, name):
    """4, 5, 7, 10, 13, 30, 32: a protocol error sends Go Away(1), closes the connection,
    stops processing (a later ping is not answered) and gives every stream
    connection_lost(SessionClosedError) caused by the ProtocolError."""
    bad, changes = PROTOCOL_ERRORS[name]
    async with RawPeer(session_is_client=False, config=fast(**changes), codec=codec) as peer:
        session = peer.session
        _, probe = await open_raw(peer, 1)
        peer.send(frame(DATA, 0, 1, 2, b"hi"))
        await until(lambda: probe.data == b"hi")
        await settle(peer)
        accepting = asyncio.ensure_future(session.accept_stream(Probe))
        peer.send(bad + frame(PING, SYN, 0, 0xBAD))
        frames = await peer.read_until_closed()
        assert frames[-1] == Frame(GO_AWAY, 0, 0, 1)
        assert not [f for f in frames if f.type == PING]
        exc = await lost(probe)
        assert isinstance(exc, SessionClosedError)
        assert isinstance(exc.__cause__, ProtocolError)
        with pytest.raises(SessionClosedError):
            await asyncio.wait_for(accepting, 5)
        assert session.is_closed and session.stream_count == 0
        with pytest.raises(SessionClosedError):
            await session.open_stream(Probe)
        await asyncio.wait_for(session.wait_closed(), 1)


async def test_syn_with_our_parity_on_a_client_session(codec):
    """13: a client-role session rejects a peer SYN on an odd ID."""
    async with RawPeer(session_is_client=True, config=fast(), codec=codec) as peer:
        _, probe = await peer.session.open_stream(Probe)
        peer.send(frame(WINDOW, SYN, 3, 0))
        frames = await peer.read_until_closed()
        assert frames[-1] == Frame(GO_AWAY, 0, 0, 1)
        assert isinstance((await lost(probe)).__cause__, ProtocolError)


async def test_internal_error_sends_go_away_2(codec, monkeypatch):
    """A bug in a frame handler closes this session with Go Away(2), not the process."""

    def broken(self):
        raise RuntimeError("bug")

    monkeypatch.setattr(stream_module.Stream, "_on_remote_fin", broken)
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        _, probe = await open_raw(peer, 1)
        peer.send(frame(WINDOW, FIN, 1, 0))
        frames = await peer.read_until_closed()
        assert frames[-1] == Frame(GO_AWAY, 0, 0, 2)
        exc = await lost(probe)
        assert isinstance(exc, SessionClosedError) and isinstance(exc.__cause__, RuntimeError)
