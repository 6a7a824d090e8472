"""Session-level yamux conformance: stream IDs and lifecycle, SYN/ACK, backlogs and limits,
half-close and reset, unknown streams, ping and keepalive, Go Away, close, and protocol
errors. Numbers in the docstrings refer to the conformance list in the yamux reference
(section 11). Every test runs on both codecs (``codec``) and both event loops. The helpers
defined here (``Probe``, ``settle``, ``open_raw``...) are shared with test_flow.py."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
import struct

import pytest
from yamux_helpers import HEADER, Frame, RawPeer, SessionPair, frame

from ytun._const import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
)
from ytun.errors import (
    GoAwayError,
    KeepaliveTimeoutError,
    ProtocolError,
    SessionClosedError,
    StreamLimitError,
    StreamOpenTimeoutError,
    StreamResetError,
    StreamsExhaustedError,
)
from ytun.yamux import Config, Stream, StreamConnection, accept_connection, open_connection
from ytun.yamux import stream as stream_module
from ytun.yamux.stream import StreamState

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
