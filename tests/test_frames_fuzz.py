"""Property tests of the frame codec and flow windows, on the compiled module and its twin.

Every property runs each available implementation against an independent reference (a
whole-buffer parser written with ``struct`` here) and against each other, so a bug the
two share is caught as well as a divergence between them.

The ``ytun-fuzz`` hypothesis profile keeps the run bounded and reproducible in CI;
``YTUN_FUZZ_EXAMPLES=5000`` digs deeper locally.
"""

from __future__ import annotations

import itertools
import os
import random
import struct
from dataclasses import dataclass
from types import ModuleType

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yamux_helpers import Recorder

from ytun import _frames_py
from ytun._const import INITIAL_WINDOW, MAX_WINDOW
from ytun.errors import ProtocolError
from ytun.yamux.codec import available

settings.register_profile(
    "ytun-fuzz",
    max_examples=int(os.environ.get("YTUN_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("ytun-fuzz")

HEADER = struct.Struct(">BBHII")
DEFAULT_MAX_PAYLOAD = _frames_py.DEFAULT_MAX_PAYLOAD


IMPLEMENTATIONS = available()


# -- the reference: frames to bytes and back, with struct only ----------------------------


def reference_encode(frame: tuple) -> bytes:
    kind = frame[0]
    if kind == "data":
        _, stream_id, flags, payload = frame
        return HEADER.pack(0, 0, flags, stream_id, len(payload)) + payload
    if kind == "window":
        _, stream_id, flags, delta = frame
        return HEADER.pack(0, 1, flags, stream_id, delta)
    if kind == "ping":
        _, flags, value = frame
        return HEADER.pack(0, 2, flags, 0, value)
    _, code = frame
    return HEADER.pack(0, 3, 0, 0, code)  # the parser drops Go Away flags


def codec_encode(codec: ModuleType, frame: tuple) -> bytes:
    """The same frame encoded by the implementation under test."""
    kind = frame[0]
    if kind == "data":
        _, stream_id, flags, payload = frame
        return codec.encode_frame(0, flags, stream_id, payload)
    if kind == "window":
        _, stream_id, flags, delta = frame
        return codec.encode_header(1, flags, stream_id, delta)
    if kind == "ping":
        _, flags, value = frame
        return codec.encode_header(2, flags, 0, value)
    _, code = frame
    return codec.encode_header(3, 0, 0, code)


@dataclass
class Parsed:
    """What a correct parser makes of a whole byte string."""

    frames: list[tuple]
    ends: list[int]  # offset just past each frame, where it is dispatched
    error_at: int | None  # offset just past the header that breaks the protocol
    error: str | None  # a fragment of the expected message


def reference_parse(data: bytes, max_payload: int) -> Parsed:
    frames: list[tuple] = []
    ends: list[int] = []
    pos = 0
    while len(data) - pos >= HEADER.size:
        version, frame_type, flags, stream_id, length = HEADER.unpack_from(data, pos)
        body = pos + HEADER.size
        error = None
        if version != 0:
            error = "version"
        elif frame_type in (0, 1):
            if stream_id == 0:
                error = "stream 0"
            elif frame_type == 0 and length > max_payload:
                error = "exceeds"
        elif frame_type in (2, 3):
            if stream_id != 0:
                error = "other than 0"
        else:
            error = "unknown frame type"
        if error is not None:
            return Parsed(frames, ends, body, error)
        if frame_type == 0:
            if len(data) - body < length:
                break  # the payload is still incomplete
            frames.append(("data", stream_id, flags, data[body : body + length]))
            pos = body + length
        elif frame_type == 1:
            frames.append(("window", stream_id, flags, length))
            pos = body
        elif frame_type == 2:
            frames.append(("ping", flags, length))
            pos = body
        else:
            frames.append(("go_away", length))
            pos = body
        ends.append(pos)
    return Parsed(frames, ends, None, None)


def expected_buffered(fed: int, parsed: Parsed) -> int:
    """``FrameParser.buffered`` after ``fed`` bytes: a partial header, or the part of a
    payload that has arrived (its header is no longer held)."""
    done = 0
    for end in parsed.ends:
        if end > fed:
            break
        done = end
    rest = fed - done
    return rest - HEADER.size if rest >= HEADER.size else rest


# -- strategies ---------------------------------------------------------------------------

u32 = st.integers(0, 0xFFFFFFFF)
stream_ids = st.one_of(st.integers(1, 8), st.integers(1, 0xFFFFFFFF))
flag_sets = st.one_of(st.sampled_from([0, 1, 2, 4, 8, 5, 6]), st.integers(0, 0xFFFF))


def _big_payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


payloads = st.one_of(
    st.binary(max_size=64),
    st.builds(_big_payload, st.integers(0, 70_000), st.integers(0, 2**16)),
)

frames = st.one_of(
    st.tuples(st.just("data"), stream_ids, flag_sets, payloads),
    st.tuples(st.just("window"), stream_ids, flag_sets, u32),
    st.tuples(st.just("ping"), flag_sets, u32),
    st.tuples(st.just("go_away"), st.one_of(st.integers(0, 3), u32)),
)

buffer_types = st.sampled_from([bytes, bytearray, memoryview])


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into chunks: byte by byte (when short), or at random points, empty
    chunks included."""
    if len(data) <= 600 and draw(st.booleans()):
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=24)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _header(version: int, frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    return HEADER.pack(version, frame_type, flags, stream_id, length)


@st.composite
def hostile_frames(draw: st.DrawFn, max_payload: int) -> bytes:
    """A frame whose fields come from the edges of their ranges. A data frame usually
    carries its full body, so whatever follows is still aligned on a header."""
    version = draw(st.sampled_from([0] * 8 + [1, 0xFF]))
    frame_type = draw(st.sampled_from([0, 0, 1, 2, 2, 3, 3, 4, 0x80, 0xFF]))
    flags = draw(flag_sets)
    stream_id = draw(st.sampled_from([0, 0, 1, 1, 2, 3, 0xFFFFFFFF]))
    edges = [0, 1, 5, max_payload - 1, max_payload, max_payload + 1, 0xFFFFFFFF]
    edges = [length for length in edges if 0 <= length <= 0xFFFFFFFF]
    length = draw(st.one_of(st.sampled_from(edges), st.integers(0, 200), u32))
    header = _header(version, frame_type, flags, stream_id, length)
    if frame_type == 0 and length <= 70_000 and draw(st.integers(0, 3)):
        return header + bytes([length & 0xFF]) * length
    return header


@st.composite
def hostile_inputs(draw: st.DrawFn) -> tuple[int, bytes]:
    """A payload limit and bytes that mix valid frames, frames with hostile fields and
    noise."""
    max_payload = draw(st.sampled_from([0, 1, 16, 1024, 65_536, DEFAULT_MAX_PAYLOAD]))
    if draw(st.integers(0, 5)) == 0:
        return max_payload, draw(st.binary(max_size=512))  # pure noise
    segment = st.one_of(
        frames.map(reference_encode),
        hostile_frames(max_payload),
        hostile_frames(max_payload),
        hostile_frames(max_payload),
        st.binary(min_size=1, max_size=24),
    )
    return max_payload, b"".join(draw(st.lists(segment, max_size=12)))


# -- (a) valid frame sequences ------------------------------------------------------------


@FUZZ
@given(data=st.data(), sequence=st.lists(frames, max_size=40), wrap=buffer_types)
def test_valid_frames_parse_identically_at_any_split(data, sequence, wrap):
    wire = b"".join(map(reference_encode, sequence))
    for codec in IMPLEMENTATIONS:
        assert b"".join(codec_encode(codec, f) for f in sequence) == wire, codec.__name__
    chunks = data.draw(splits(wire), label="chunks")
    parsed = reference_parse(wire, DEFAULT_MAX_PAYLOAD)
    assert parsed.frames == sequence and parsed.error is None

    results = []
    for codec in IMPLEMENTATIONS:
        recorder = Recorder()
        parser = codec.FrameParser(recorder)
        fed = 0
        trace = []
        for chunk in chunks:
            parser.feed(wrap(chunk))
            fed += len(chunk)
            trace.append((len(recorder.frames), parser.buffered))
            assert recorder.frames == sequence[: len(recorder.frames)]
            assert parser.buffered == expected_buffered(fed, parsed)
        assert recorder.frames == sequence, codec.__name__
        assert parser.buffered == 0
        # Round trip: re-encoding what was dispatched reproduces the input exactly.
        assert b"".join(codec_encode(codec, f) for f in recorder.frames) == wire
        results.append((recorder.frames, trace))
    assert all(result == results[0] for result in results[1:])


# -- (b) hostile input --------------------------------------------------------------------


def _run_hostile(codec: ModuleType, max_payload: int, chunks: list[bytes], wrap: type):
    """Feed ``chunks`` until the parser fails; what it dispatched, where and why it failed."""
    recorder = Recorder()
    parser = codec.FrameParser(recorder, max_payload)
    for index, chunk in enumerate(chunks):
        try:
            parser.feed(wrap(chunk))
        except ProtocolError as exc:
            assert exc.go_away_code == 1
            with pytest.raises(ProtocolError, match="earlier error"):
                parser.feed(b"\x00" * 12)
            return recorder.frames, index, str(exc), None
        # Anything but ProtocolError propagates and fails the test.
    return recorder.frames, None, None, parser.buffered


@FUZZ
@given(data=st.data(), hostile=hostile_inputs(), wrap=buffer_types)
def test_hostile_bytes_fail_cleanly_and_identically(data, hostile, wrap):
    max_payload, wire = hostile
    chunks = data.draw(splits(wire), label="chunks")
    parsed = reference_parse(wire, max_payload)
    event(f"failure: {parsed.error}")
    fed_after = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        fed_after.append(total)

    results = [_run_hostile(codec, max_payload, chunks, wrap) for codec in IMPLEMENTATIONS]
    for codec, (dispatched, failed_in, message, buffered) in zip(
        IMPLEMENTATIONS, results, strict=True
    ):
        name = codec.__name__
        if parsed.error_at is None:
            assert failed_in is None, (name, message)
            assert dispatched == parsed.frames, name
            assert buffered == expected_buffered(len(wire), parsed), name
        else:
            # The failure surfaces in the chunk that completes the offending header, after
            # every frame before it and nothing after it.
            expected_chunk = next(i for i, end in enumerate(fed_after) if end >= parsed.error_at)
            assert failed_in == expected_chunk, (name, message)
            assert parsed.error in message, (name, message)
            assert dispatched == parsed.frames, name
    # Both implementations agree on everything, down to the error message.
    assert all(result == results[0] for result in results[1:]), results


def test_reference_parser_agrees_with_hand_written_vectors():
    """The oracle itself, checked on a few cases whose answer is known by hand."""
    ping = _header(0, 2, 1, 0, 7)
    assert reference_parse(ping + _header(1, 0, 0, 1, 0), 16) == Parsed(
        [("ping", 1, 7)], [12], 24, "version"
    )
    data = _header(0, 0, 0, 1, 3) + b"abc"
    assert reference_parse(data + data[:13], 16).frames == [("data", 1, 0, b"abc")]
    assert reference_parse(_header(0, 0, 0, 1, 17), 16).error == "exceeds"
    assert expected_buffered(5, Parsed([], [], None, None)) == 5
    assert expected_buffered(14, Parsed([], [], None, None)) == 2


# -- (c) flow windows ---------------------------------------------------------------------

sizes = st.one_of(
    st.integers(0, 16),
    st.integers(0, 70_000),
    st.integers(0, 2 * INITIAL_WINDOW),
    st.integers(0, MAX_WINDOW),
)
# An amount is absolute, or an offset from the boundary that matters for the operation
# (see _resolve), so that off-by-one mistakes at each limit get exercised.
amounts = st.one_of(
    sizes.map(lambda size: ("abs", size)),
    st.sampled_from([0, 0, 0, -1, 1, -2, 2]).map(lambda offset: ("edge", offset)),
)
window_ops = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(
                [
                    "receive",
                    "consume",
                    "consume_to_half",
                    "receive_consumed",
                    "receive_consumed_to_half",
                    "take_send",
                    "add_send",
                ]
            ),
            amounts,
        ),
        st.tuples(st.just("consume_all"), st.just(("abs", 0))),
        st.tuples(st.just("update"), st.booleans().map(lambda force: ("abs", int(force)))),
    ),
    min_size=20,
    max_size=80,
)
recv_windows = st.one_of(
    st.just(INITIAL_WINDOW),
    st.sampled_from([INITIAL_WINDOW + 1, 1 << 20, 16 << 20, MAX_WINDOW]),
    st.integers(INITIAL_WINDOW, MAX_WINDOW),
)


def _state(window) -> tuple[int, int, int, int]:
    return (window.send_credit, window.recv_credit, window.buffered, window.recv_window)


def _resolve(op: str, amount: tuple[str, int], window) -> tuple[str, int]:
    """The method to call and its argument, for the state ``window`` is in now."""
    send, credit, buffered, recv_window = _state(window)
    method = op.removesuffix("_to_half")
    kind, value = amount
    if kind == "edge":
        boundary = {
            "receive": credit,
            "receive_consumed": credit,
            "consume": buffered,
            # taking this much makes exactly half the window reclaimable
            "consume_to_half": recv_window // 2 - (recv_window - buffered - credit),
            "receive_consumed_to_half": recv_window // 2 - (recv_window - buffered - credit),
            "take_send": send,
            "add_send": MAX_WINDOW - send,
        }[op]
        value = max(0, boundary + value)
    return method, value


def _apply(window, op: str, value: int):
    """Run one operation; its result, or the class of the error it raised."""
    try:
        if op == "consume_all":
            return window.consume(window.buffered)
        if op == "update":
            return window.update(bool(value))
        return getattr(window, op)(value)
    except (ProtocolError, ValueError) as exc:
        return type(exc)


def _check_invariants(window, recv_window: int) -> None:
    send, credit, buffered, window_size = _state(window)
    assert window_size == recv_window
    assert 0 <= send <= MAX_WINDOW
    assert credit >= 0 and buffered >= 0
    # What the peer may still send plus what we hold never exceeds the window; the rest
    # is reclaimable and is granted back by update(), never lost.
    assert credit + buffered <= recv_window


@FUZZ
@given(recv_window=recv_windows, ops=window_ops)
def test_flow_window_invariants(recv_window, ops):
    windows = [codec.FlowWindow(recv_window) for codec in IMPLEMENTATIONS]
    for window in windows:
        _check_invariants(window, recv_window)
    for op, amount in ops:
        op, value = _resolve(op, amount, windows[0])
        before = _state(windows[0])
        outcomes = [_apply(window, op, value) for window in windows]
        assert all(outcome == outcomes[0] for outcome in outcomes[1:]), (op, value, outcomes)
        states = [_state(window) for window in windows]
        assert all(state == states[0] for state in states[1:]), (op, value, states)
        outcome = outcomes[0]
        send, credit, buffered, _ = before

        if op == "take_send":
            assert outcome == min(value, send)
            assert states[0][0] == send - outcome
        elif op == "add_send":
            if send + value > MAX_WINDOW:
                assert outcome is ProtocolError and states[0] == before
            else:
                assert states[0][0] == send + value
        elif op in ("receive", "receive_consumed") and value > credit:
            assert outcome is ProtocolError and states[0] == before
        elif op == "consume" and value > buffered:
            assert outcome is ValueError and states[0] == before
        elif op == "receive":
            assert states[0][1:3] == (credit - value, buffered + value)
        else:  # update, consume, consume_all, receive_consumed: may grant credit back
            granted = outcome
            forced = op == "update" and value
            received = value if op == "receive_consumed" else 0
            taken = {"consume": value, "consume_all": buffered}.get(op, 0)
            reclaimable = recv_window - states[0][1] - states[0][2] + granted
            assert states[0][1] == credit - received + granted
            assert states[0][2] == buffered - taken
            if granted:
                # A grant hands back everything reclaimable, and only when it is worth it.
                assert states[0][1] + states[0][2] == recv_window
                assert forced or reclaimable >= recv_window // 2
            else:
                assert reclaimable <= 0 or (not forced and reclaimable < recv_window // 2)
        _check_invariants(windows[0], recv_window)

    # Forcing an update always restores the full window.
    for window in windows:
        window.update(True)
        assert window.recv_credit + window.buffered == recv_window
