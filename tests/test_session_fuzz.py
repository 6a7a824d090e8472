"""Property tests: random frame sequences, valid and invalid, mixed with local actions,
fed to the yamux core and to a whole Session. Whatever arrives, the only failure is the
typed ProtocolError (which a session turns into Go Away and a close), no stream leaks and
the limits hold. CI runs a few hundred examples; ``--hypothesis-profile=long`` runs many
more on demand."""

from __future__ import annotations

import asyncio
import itertools
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yamux_helpers import HEADER, CoreDriver, fast

from ytun._const import MAX_WINDOW
from ytun.errors import GoAwayError, ProtocolError, SessionClosedError
from ytun.yamux import Session
from ytun.yamux import codec as codecs

try:
    import uvloop
except ImportError:  # not on every platform
    uvloop = None

LOOPS = [asyncio.new_event_loop] + ([uvloop.new_event_loop] if uvloop is not None else [])

CONFIG = fast(
    max_streams=6,
    accept_backlog=3,
    max_unacked_streams=3,
    pong_backlog=4,
    max_frame_payload=64,
    max_recv_payload=4096,
    stream_open_timeout=1.0,
    stream_close_timeout=1.0,
)

# Stream IDs: a few of each parity, stream 0, and the far end of the range.
stream_ids = st.one_of(st.integers(0, 8), st.sampled_from([0xFFFFFFFD, 0xFFFFFFFE]))
flags = st.one_of(st.sampled_from([0, 1, 2, 4, 8, 5, 6, 9]), st.integers(0, 0xFFFF))
lengths = st.one_of(st.integers(0, 16), st.sampled_from([4096, 262144, 0x7FFFFFFF, MAX_WINDOW]))


@st.composite
def frames(draw) -> bytes:
    version = draw(st.sampled_from([0] * 30 + [1]))
    frame_type = draw(st.sampled_from([0] * 8 + [1] * 6 + [2, 3, 4]))
    stream_id = draw(stream_ids)
    if frame_type == 0:
        size = draw(st.integers(0, 48))
        length = draw(st.sampled_from([size] * 9 + [5000]))
        return HEADER.pack(version, 0, draw(flags), stream_id, length) + b"p" * size
    return HEADER.pack(version, frame_type, draw(flags), stream_id, draw(lengths))


# Local actions between frames: (name, small argument).
actions = st.tuples(
    st.sampled_from(["open", "write", "write_eof", "close", "abort", "pause", "resume", "run"]),
    st.integers(0, 7),
)
steps = st.lists(st.one_of(frames(), actions), max_size=40)
chunking = st.integers(1, 64)

# max_examples comes from the active profile: 100 by default, more with ``long``.
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def act(driver: CoreDriver, action: tuple[str, int]) -> None:
    name, index = action
    if name == "run":
        driver.run()
        driver.sent()
        return
    if name == "open":
        try:
            driver.open()
        except Exception as exc:  # the limits say no, with a typed error
            assert type(exc).__name__ in {"StreamLimitError", "StreamsExhaustedError"}
        return
    streams = list(driver.mux.streams.values())
    if not streams:
        return
    stream = streams[index % len(streams)]
    if name == "write":
        if not stream.is_closing():
            stream.write(b"w" * (index * 20 + 1))
    elif name == "write_eof":
        stream.write_eof()
    elif name == "close":
        stream.close()
    elif name == "abort":
        stream.abort()
    elif name == "pause":
        stream.pause_reading()
    else:
        stream.resume_reading()


def check_invariants(driver: CoreDriver) -> None:
    mux = driver.mux
    config = mux.config
    assert len(mux.streams) <= config.max_streams
    assert len(mux.backlog) <= config.accept_backlog
    assert mux.unacked <= config.max_unacked_streams
    for stream_id, stream in mux.streams.items():
        assert stream.stream_id == stream_id and not stream.finished
        window = stream._window
        assert 0 <= window.send_credit <= MAX_WINDOW
        assert 0 <= window.recv_credit <= window.recv_window
        assert 0 <= window.buffered <= window.recv_window
    for stream in driver.inbound:
        if stream.finished:
            assert mux.streams.get(stream.stream_id) is not stream
    # No protocol hears connection_lost twice or anything after it.
    for protocol in driver.protocols.values():
        lost = [i for i, event in enumerate(protocol.events) if event[0] == "lost"]
        assert len(lost) <= 1 and (not lost or lost[0] == len(protocol.events) - 1)


@FUZZ
@given(steps=steps, chunk=chunking, attach=st.booleans(), client=st.booleans())
def test_core_survives_any_frames(steps, chunk, attach, client):
    for codec in codecs.available():
        driver = CoreDriver(codec, client=client, config=CONFIG, attach=attach)
        failed = False
        for step in steps:
            if isinstance(step, bytes):
                try:
                    for pos in range(0, len(step), chunk):
                        driver.feed(step[pos : pos + chunk])
                except ProtocolError:
                    failed = True
                    break
            else:
                act(driver, step)
            check_invariants(driver)
        if not failed:
            for timer in driver.timers:  # open and close timeouts expire
                if not timer.cancelled:
                    timer.fire()
            driver.run()
            check_invariants(driver)
        driver.mux.close_all(SessionClosedError("test over"))
        driver.run()
        assert not driver.mux.streams and not driver.mux.backlog
        for protocol in driver.protocols.values():
            assert len(protocol.lost) == 1


class CaptureTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data) -> None:
        self.out += data

    def writelines(self, list_of_data) -> None:
        for data in list_of_data:
            self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@FUZZ
@given(stream=st.lists(frames(), max_size=30), chunk=chunking)
def test_session_answers_any_frames_with_at_most_go_away(stream, chunk):
    """A whole Session on a capture transport, on both codecs and both loops: no exception
    leaves data_received; a broken stream of frames ends in exactly one Go Away."""
    errors: list[dict] = []
    for codec, new_loop in itertools.product(codecs.available(), LOOPS):
        loop = new_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        try:

            async def scenario(codec) -> None:
                session = Session(client=False, config=CONFIG, codec=codec)
                transport = CaptureTransport()
                session.connection_made(transport)
                data = b"".join(stream)
                for pos in range(0, len(data), chunk):
                    session.data_received(data[pos : pos + chunk])
                    await asyncio.sleep(0)
                await asyncio.sleep(0)
                go_aways = go_away_codes(bytes(transport.out))
                if session.is_closed:
                    assert transport.closed
                    assert isinstance(session.error, SessionClosedError)
                    cause = session.error.__cause__
                    if isinstance(session.error, GoAwayError):
                        assert go_aways == []  # the peer said Go Away: nothing to answer
                    else:  # never an internal error (Go Away 2) on any input
                        assert isinstance(cause, ProtocolError), session.error
                        assert go_aways == [cause.go_away_code]
                else:
                    assert go_aways == [] and session.stream_count <= CONFIG.max_streams
                session.abort()
                assert session.stream_count == 0

            loop.run_until_complete(scenario(codec))
        finally:
            loop.close()
    assert not errors


def go_away_codes(out: bytes) -> list[int]:
    """Go Away codes in what the session wrote (its own frames always parse)."""
    codes = []
    pos = 0
    while pos + 12 <= len(out):
        _, frame_type, _, _, length = struct.unpack_from(">BBHII", out, pos)
        pos += 12
        if frame_type == 0:
            pos += length
        elif frame_type == 3:
            codes.append(length)
    return codes
