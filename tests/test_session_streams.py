"""Stream frames through a session: half-close (FIN), reset (RST) and unknown streams.
Numbers refer to the conformance list in the yamux reference (section 11). Every test runs
on both codecs and both event loops."""

from __future__ import annotations

import asyncio

import pytest
from yamux_helpers import (
    ACK,
    DATA,
    FIN,
    HEADER,
    RST,
    SYN,
    WINDOW,
    Frame,
    Probe,
    RawPeer,
    fast,
    frame,
    is_rst,
    lost,
    of_stream,
    open_raw,
    read_data,
    settle,
    until,
)

from ytun._const import INITIAL_WINDOW
from ytun.errors import StreamResetError
from ytun.yamux import accept_connection

# -- 21, 22, 23: half-close ------------------------------------------------------------


@pytest.mark.parametrize("fin", ["window", "data-empty", "data-payload"])
@pytest.mark.parametrize("paused", [False, True], ids=["reading", "paused"])
async def test_remote_fin_gives_data_then_eof(codec, fin, paused):
    """21: FIN via Window Update or Data (with or without payload): buffered data, then
    EOF exactly once; our direction stays writable; FIN both ways removes the stream."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        stream, probe = await open_raw(peer, 1, paused=paused)
        closing = {
            "window": frame(WINDOW, FIN, 1, 0),
            "data-empty": frame(DATA, FIN, 1, 0),
            "data-payload": frame(DATA, FIN, 1, 4, b"tail"),
        }[fin]
        peer.send(frame(DATA, 0, 1, 4, b"body") + closing + frame(WINDOW, FIN, 1, 0))
        expected = b"body" + (b"tail" if fin == "data-payload" else b"")
        await settle(peer)
        if paused:
            assert probe.data == b"" and probe.eofs == 0
            probe.transport.resume_reading()
        await until(lambda: probe.eofs == 1)
        assert probe.data == expected
        stream.write(b"still writable")
        assert (await peer.expect(DATA, 1)).payload == b"still writable"
        assert peer.session.stream_count == 1
        stream.close()
        assert (await peer.read_frame()) == Frame(WINDOW, FIN, 1, 0)
        assert await lost(probe) is None
        assert peer.session.stream_count == 0
        assert probe.eofs == 1 and not probe.violations  # the duplicate FIN was ignored


async def test_eof_received_false_closes_our_side(codec):
    """An attached protocol that returns False from eof_received closes the stream."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        stream, probe = await open_raw(peer, 1, keep_open=False)
        stream.write(b"queued")
        peer.send(frame(DATA, FIN, 1, 3, b"bye"))
        frames = of_stream(await settle(peer), 1)
        assert b"".join(f.payload for f in frames) == b"queued"
        assert frames[-1].flags & FIN
        assert await lost(probe) is None
        assert probe.data == b"bye" and peer.session.stream_count == 0


async def test_data_after_fin_resets_the_stream(codec):
    """23: Data after the peer's FIN resets that stream (RST sent, protocol told); the
    session carries on and the protocol never sees data after EOF."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        _, probe = await open_raw(peer, 1)
        _, other = await open_raw(peer, 3)
        peer.send(frame(DATA, FIN, 1, 3, b"end") + frame(DATA, 0, 1, 5, b"extra"))
        assert isinstance(await lost(probe), StreamResetError)
        assert probe.data == b"end" and probe.eofs == 1 and not probe.violations
        frames = await settle(peer)
        assert any(is_rst(f, 1) for f in frames)
        assert peer.session.stream_count == 1 and not peer.session.is_closed
        peer.send(frame(DATA, 0, 3, 2, b"ok"))
        await until(lambda: other.data == b"ok")


# -- 24, 25, 26, 27: reset and unknown streams -----------------------------------------


@pytest.mark.parametrize("rst", ["window", "data", "data-body"])
async def test_remote_reset_fails_readers_and_writers(codec, rst):
    """24: RST fails a pending read and a writer blocked on a zero window at once;
    buffered data is dropped."""
    config = fast(stream_write_high=16 * 1024, stream_write_low=4 * 1024)
    async with RawPeer(session_is_client=False, config=config, codec=codec) as peer:
        peer.send(frame(WINDOW, SYN, 1, 0) + frame(WINDOW, SYN, 3, 0))
        reader = await asyncio.wait_for(accept_connection(peer.session), 5)
        writer = await asyncio.wait_for(accept_connection(peer.session), 5)
        pending_read = asyncio.ensure_future(reader.read(10))
        writer.write(b"w" * (INITIAL_WINDOW + 64 * 1024))
        pending_drain = asyncio.ensure_future(writer.drain())
        await read_data(peer, 3, INITIAL_WINDOW)
        assert not pending_read.done() and not pending_drain.done()
        reset = {
            "window": frame(WINDOW, RST, 1, 0) + frame(WINDOW, RST, 3, 0),
            "data": frame(DATA, RST, 1, 0) + frame(DATA, RST, 3, 0),
            "data-body": frame(DATA, RST, 1, 4, b"junk") + frame(DATA, RST, 3, 1, b"j"),
        }
        peer.send(reset[rst])
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(pending_read, 5)
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(pending_drain, 5)
        assert peer.session.stream_count == 0
        # Buffered, unread data is dropped on RST.
        _, probe = await open_raw(peer, 5, paused=True)
        peer.send(frame(DATA, 0, 5, 6, b"unread") + frame(WINDOW, RST, 5, 0))
        assert isinstance(await lost(probe), StreamResetError)
        probe.transport.resume_reading()
        frames = await settle(peer)
        assert probe.data == b"" and not probe.violations
        # No RST is sent back for a reset the peer started; the session is alive.
        assert not any(f.flags & RST for f in frames)
        assert not peer.session.is_closed


async def test_frames_for_unknown_streams_are_ignored(codec):
    """25: frames for never-opened or finished streams: Data bodies drained, flags
    ignored, nothing sent back, the session stays up and in sync."""
    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        stream, probe = await open_raw(peer, 1)
        stream.close()
        peer.send(frame(WINDOW, FIN, 1, 0))
        assert await lost(probe) is None
        await settle(peer)
        junk = b"".join(
            [
                frame(DATA, 0, 99, 300, b"\xff" * 300),  # never opened, the peer's parity
                # Our parity; the body looks like a ping, which must not be answered.
                frame(DATA, 0, 100, 12, HEADER.pack(0, 2, 1, 0, 5)),
                frame(WINDOW, 0, 99, 1000),
                frame(WINDOW, FIN, 101, 0),
                frame(WINDOW, RST, 103, 0),
                frame(DATA, FIN | RST, 105, 3, b"abc"),
                frame(DATA, ACK, 107, 0),
                frame(DATA, 0, 1, 4, b"late"),  # a finished stream
                frame(WINDOW, FIN, 1, 10),
                frame(WINDOW, RST, 1, 0),
            ]
        )
        peer.send(junk)
        assert await settle(peer) == []
        assert peer.session.stream_count == 0 and not peer.session.is_closed
        await open_raw(peer, 9)


async def test_close_timeout_resets_a_stream_the_peer_never_closes(codec):
    """26: local close, the peer never sends FIN: RST after stream_close_timeout and the
    stream is gone."""
    async with RawPeer(
        session_is_client=False, config=fast(stream_close_timeout=0.2), codec=codec
    ) as peer:
        stream, probe = await open_raw(peer, 1)
        await settle(peer)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream.write(b"last words")
        stream.close()
        assert await peer.read_frame() == Frame(DATA, 0, 1, 10, b"last words")
        assert await peer.read_frame() == Frame(WINDOW, FIN, 1, 0)
        # Data after our close is credited back but not delivered.
        peer.send(frame(DATA, 0, 1, 5, b"ignored"[:5]))
        rst = await peer.read_frame(timeout=2)
        assert rst == Frame(WINDOW, RST, 1, 0)
        assert loop.time() - started >= 0.19
        await lost(probe)
        assert peer.session.stream_count == 0 and probe.data == b""
        assert not peer.session.is_closed


async def test_close_completed_by_peer_fin_cancels_the_timeout(codec):
    async with RawPeer(
        session_is_client=False, config=fast(stream_close_timeout=0.1), codec=codec
    ) as peer:
        stream, probe = await open_raw(peer, 1)
        await settle(peer)
        stream.close()
        assert (await peer.read_frame()) == Frame(WINDOW, FIN, 1, 0)
        peer.send(frame(WINDOW, FIN, 1, 0))
        assert await lost(probe) is None
        await asyncio.sleep(0.15)
        assert not any(f.flags & RST for f in await settle(peer))


@pytest.mark.parametrize("how", ["reset", "abort"])
async def test_local_reset_drops_queued_data(codec, how):
    """27: after a local reset no Data frame of that stream follows the RST."""
    async with RawPeer(session_is_client=True, config=fast(), codec=codec) as peer:
        stream, probe = await peer.session.open_stream(Probe)
        stream.write(b"a" * (INITIAL_WINDOW + 100_000))
        await read_data(peer, 1, 1000)
        getattr(stream, how)()
        frames = [await peer.read_frame()]
        while not is_rst(frames[-1], 1):
            frames.append(await peer.read_frame())
        # More credit changes nothing: the stream is gone.
        peer.send(frame(WINDOW, ACK, 1, 1024 * 1024))
        assert not of_stream(await settle(peer), 1)
        assert await lost(probe) is None
        assert peer.session.stream_count == 0
        # Written and reset in the same loop iteration: nothing but the SYN and the RST.
        stream, _ = await peer.session.open_stream(Probe)
        stream.write(b"never sent")
        getattr(stream, how)()
        assert [(f.type, f.flags) for f in of_stream(await settle(peer), 3)] == [
            (WINDOW, SYN),
            (WINDOW, RST),
        ]


async def test_protocol_exception_resets_only_its_stream(codec):
    class Faulty(Probe):
        def data_received(self, data: bytes) -> None:
            raise RuntimeError("application bug")

    async with RawPeer(session_is_client=False, config=fast(), codec=codec) as peer:
        peer.send(frame(WINDOW, SYN, 1, 0))
        _, probe = await asyncio.wait_for(peer.session.accept_stream(Faulty), 5)
        _, other = await open_raw(peer, 3)
        peer.send(frame(DATA, 0, 1, 4, b"boom") + frame(DATA, 0, 3, 2, b"ok"))
        assert isinstance(await lost(probe), RuntimeError)
        assert any(is_rst(f, 1) for f in await settle(peer))
        await until(lambda: other.data == b"ok")
        assert not peer.session.is_closed
