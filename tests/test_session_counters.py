"""The byte counters of a session (what the admin API shows per client), exact to the
byte, on both codecs and both event loops."""

from __future__ import annotations

from yamux_helpers import ACK, FAST, PING, SYN, Probe, RawPeer, frame, until


async def test_bytes_in_and_out_count_every_frame_byte(codec) -> None:
    async with RawPeer(session_is_client=False, config=FAST, codec=codec) as peer:
        assert (peer.session.bytes_in, peer.session.bytes_out) == (0, 0)
        peer.send(frame(PING, SYN, 0, 7) + frame(PING, SYN, 0, 8))
        for value in (7, 8):
            pong = await peer.expect(PING)
            assert (pong.flags, pong.length) == (ACK, value)
        await until(lambda: peer.session.bytes_in == 24, what="24 bytes read")
        assert peer.session.bytes_out == 24  # two 12-byte pongs, nothing else


async def test_data_frames_count_header_and_payload(codec) -> None:
    async with RawPeer(session_is_client=True, config=FAST, codec=codec) as peer:
        stream, _ = peer.session.open_stream_nowait(Probe)
        stream.write(b"x" * 1000)
        payload = sent = 0
        while payload < 1000:
            got = await peer.read_frame()
            payload += len(got.payload)
            sent += 12 + len(got.payload)
        assert peer.session.bytes_out == sent  # the SYN and the data, headers included
        assert peer.session.bytes_in == 0
