"""The frame codec and flow windows, run against the compiled module and its twin."""

from __future__ import annotations

import itertools
import struct

import pytest
from yamux_helpers import Recorder

from ytun.errors import ProtocolError

TYPES = range(4)
BLOCK = bytes(range(256)) * 40
FLAG_SETS = range(16)


def test_header_vectors(codec):
    assert codec.encode_header(0, 1, 1, 5) == bytes.fromhex("000000010000000100000005")
    assert codec.encode_header(1, 0x0102, 0x01020304, 0xA0B0C0D0) == bytes.fromhex(
        "000101020102030 4a0b0c0d0".replace(" ", "")
    )
    assert codec.encode_header(3, 0, 0, 2) == bytes.fromhex("000300000000000000000002")


@pytest.mark.parametrize(("frame_type", "flags"), list(itertools.product(TYPES, FLAG_SETS)))
def test_round_trip_every_type_and_flag(codec, frame_type, flags):
    header = codec.encode_header(frame_type, flags, 0xFFFFFFFF, 0x12345678)
    assert header == struct.pack(">BBHII", 0, frame_type, flags, 0xFFFFFFFF, 0x12345678)
    assert codec.decode_header(header) == (0, frame_type, flags, 0xFFFFFFFF, 0x12345678)


@pytest.mark.parametrize(
    "fields",
    [
        (-1, 0, 0, 0),
        (256, 0, 0, 0),
        (0, 0x10000, 0, 0),
        (0, 0, 1 << 32, 0),
        (0, 0, 0, -1),
        (0, 0, 0, 1 << 32),
    ],
)
def test_encode_rejects_out_of_range(codec, fields):
    with pytest.raises((ValueError, OverflowError)):
        codec.encode_header(*fields)


def test_decode_header_needs_twelve_bytes(codec):
    with pytest.raises(ValueError):
        codec.decode_header(b"\x00" * 11)


def test_encode_frame_joins_header_and_payload(codec):
    assert codec.encode_frame(0, 4, 7, b"abc") == codec.encode_header(0, 4, 7, 3) + b"abc"
    assert codec.encode_frame(0, 0, 7, bytearray(b"")) == codec.encode_header(0, 0, 7, 0)


def sample_stream(codec) -> tuple[bytes, list[tuple]]:
    frames = [
        (codec.encode_header(1, 1, 1, 0), ("window", 1, 1, 0)),
        (codec.encode_frame(0, 0, 1, b"hello"), ("data", 1, 0, b"hello")),
        (codec.encode_header(2, 1, 0, 77), ("ping", 1, 77)),
        (codec.encode_frame(0, 4, 3, b""), ("data", 3, 4, b"")),
        (codec.encode_frame(0, 0, 5, BLOCK), ("data", 5, 0, BLOCK)),
        (codec.encode_header(1, 8, 5, 9), ("window", 5, 8, 9)),
        (codec.encode_header(3, 0, 0, 2), ("go_away", 2)),
    ]
    return b"".join(f for f, _ in frames), [e for _, e in frames]


def test_many_frames_in_one_chunk(codec):
    data, expected = sample_stream(codec)
    recorder = Recorder()
    codec.FrameParser(recorder).feed(data)
    assert recorder.frames == expected


@pytest.mark.parametrize("split", range(1, 12))
def test_header_split_at_every_offset(codec, split):
    data = codec.encode_frame(0, 2, 9, b"xyz")
    recorder = Recorder()
    parser = codec.FrameParser(recorder)
    parser.feed(data[:split])
    assert recorder.frames == [] and parser.buffered == split
    parser.feed(data[split:])
    assert recorder.frames == [("data", 9, 2, b"xyz")]
    assert parser.buffered == 0


def test_byte_by_byte(codec):
    data, expected = sample_stream(codec)
    recorder = Recorder()
    parser = codec.FrameParser(recorder)
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
    assert recorder.frames == expected


def test_accepts_any_buffer(codec):
    data, expected = sample_stream(codec)
    for wrap in (bytes, bytearray, memoryview):
        recorder = Recorder()
        codec.FrameParser(recorder).feed(wrap(data))
        assert recorder.frames == expected


def test_unknown_flag_bits_are_passed_through(codec):
    recorder = Recorder()
    codec.FrameParser(recorder).feed(codec.encode_header(1, 0x8010, 1, 0))
    assert recorder.frames == [("window", 1, 0x8010, 0)]


def test_rst_data_body_is_consumed(codec):
    recorder = Recorder()
    codec.FrameParser(recorder).feed(
        codec.encode_frame(0, 8, 1, b"junk") + codec.encode_header(2, 1, 0, 5)
    )
    assert recorder.frames == [("data", 1, 8, b"junk"), ("ping", 1, 5)]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (struct.pack(">BBHII", 1, 0, 0, 1, 0), "version"),
        (struct.pack(">BBHII", 0, 4, 0, 1, 0), "unknown frame type"),
        (struct.pack(">BBHII", 0, 255, 0, 1, 0), "unknown frame type"),
        (struct.pack(">BBHII", 0, 0, 0, 0, 0), "stream 0"),
        (struct.pack(">BBHII", 0, 1, 1, 0, 0), "stream 0"),
        (struct.pack(">BBHII", 0, 2, 1, 3, 0), "other than 0"),
        (struct.pack(">BBHII", 0, 3, 0, 3, 0), "other than 0"),
    ],
)
def test_protocol_errors_stop_the_parser(codec, header, message):
    recorder = Recorder()
    parser = codec.FrameParser(recorder)
    ping = codec.encode_header(2, 1, 0, 1)
    with pytest.raises(ProtocolError, match=message) as info:
        parser.feed(ping + header + ping)
    assert info.value.go_away_code == 1
    assert recorder.frames == [("ping", 1, 1)]  # nothing after the bad frame
    with pytest.raises(ProtocolError, match="earlier error"):
        parser.feed(ping)


def test_payload_limit_checked_before_allocating(codec):
    recorder = Recorder()
    parser = codec.FrameParser(recorder, max_payload=1024)
    parser.feed(codec.encode_frame(0, 0, 1, b"x" * 1024))
    with pytest.raises(ProtocolError, match="exceeds"):
        parser.feed(codec.encode_header(0, 0, 1, 0xFFFFFFFF))
    assert parser.buffered == 0
    assert len(recorder.frames) == 1


def test_handler_exception_stops_the_parser(codec):
    class Failing(Recorder):
        def on_ping(self, flags, value):
            raise RuntimeError("boom")

    parser = codec.FrameParser(Failing())
    with pytest.raises(RuntimeError):
        parser.feed(codec.encode_header(2, 1, 0, 1))
    with pytest.raises(ProtocolError):
        parser.feed(b"")


# -- flow windows ------------------------------------------------------------------------


def test_send_window(codec):
    window = codec.FlowWindow()
    assert window.send_credit == 262144
    assert window.take_send(100_000) == 100_000
    assert window.take_send(200_000) == 162144
    assert window.take_send(1) == 0
    window.add_send(10)
    assert window.take_send(100) == 10
    window.add_send(0xFFFFFFFF)
    with pytest.raises(ProtocolError, match="overflow"):
        window.add_send(1)


def test_receive_window_exceeded_by_one_byte(codec):
    window = codec.FlowWindow()
    window.receive(262143)
    with pytest.raises(ProtocolError) as info:
        window.receive(2)
    assert info.value.go_away_code == 1
    window.receive(1)
    assert window.recv_credit == 0


def test_update_only_after_half_the_window_is_consumed(codec):
    window = codec.FlowWindow()
    window.receive(200_000)
    assert window.consume(100_000) == 0  # 100 000 reclaimable < 131 072
    assert window.consume(31_071) == 0
    assert window.consume(1) == 131_072  # exactly half: update with the whole amount
    assert window.recv_credit == 262144 - 200_000 + 131_072
    assert window.consume(68_928) == 0
    assert window.buffered == 0


@pytest.mark.parametrize("sizes", [[1, 7, 4093, 65536, 3, 131_000], [262144], [99] * 2000])
def test_credit_is_exact_after_odd_reads(codec, sizes):
    window = codec.FlowWindow()
    granted = 0
    for size in sizes:
        window.receive(min(size, window.recv_credit))
        granted += window.consume(window.buffered)
    # Whatever was consumed is either credited back or still reclaimable, never lost.
    assert window.recv_credit + window.buffered + window.update(True) == 262144


def test_receive_consumed_matches_receive_then_consume(codec):
    a, b = codec.FlowWindow(), codec.FlowWindow()
    for size in (1000, 130_000, 50_000, 82_144):
        a.receive(size)
        assert a.consume(size) == b.receive_consumed(size)
    assert (a.recv_credit, a.buffered) == (b.recv_credit, b.buffered)


def test_larger_window_is_advertised_as_a_delta(codec):
    window = codec.FlowWindow(1024 * 1024)
    assert window.update(True) == 1024 * 1024 - 262144
    assert window.recv_credit == 1024 * 1024
    with pytest.raises(ValueError):
        codec.FlowWindow(1000)


def test_consume_more_than_buffered_is_an_error(codec):
    window = codec.FlowWindow()
    window.receive(10)
    with pytest.raises(ValueError):
        window.consume(11)


def test_feed_answers_every_byte_taken_without_a_budget(codec):
    data, expected = sample_stream(codec)
    recorder = Recorder()
    parser = codec.FrameParser(recorder)
    assert parser.feed(data[:5]) == 5  # a partial header is taken (buffered) too
    assert parser.feed(data[5:]) == len(data) - 5
    assert recorder.frames == expected


@pytest.mark.parametrize("budget", [1, 2, 3, 7])
def test_frame_budget_stops_at_a_frame_boundary_and_loses_nothing(codec, budget):
    data, expected = sample_stream(codec)
    data += b"\x00\x01"  # and the start of a header nobody finished yet
    recorder = Recorder()
    parser = codec.FrameParser(recorder, max_frames=budget)
    rest = memoryview(data)
    calls = 0
    while rest:
        before = len(recorder.frames)
        taken = parser.feed(rest)
        assert len(recorder.frames) - before <= budget
        rest = rest[taken:]
        calls += 1
        assert calls <= len(expected) + 1
    assert recorder.frames == expected
    assert parser.buffered == 2
    assert calls == -(-len(expected) // budget)


def test_frame_budget_counts_a_frame_completed_from_an_earlier_read(codec):
    first = codec.encode_frame(0, 0, 1, b"abcdef")
    second = codec.encode_header(1, 0, 1, 5)
    recorder = Recorder()
    parser = codec.FrameParser(recorder, max_frames=1)
    assert parser.feed(first[:15]) == 15
    assert parser.feed(first[15:] + second) == len(first) - 15  # the body's end is a frame
    assert recorder.frames == [("data", 1, 0, b"abcdef")]
    assert parser.feed(second) == len(second)
    assert recorder.frames[-1] == ("window", 1, 0, 5)


def test_negative_frame_budget_is_refused(codec):
    with pytest.raises(ValueError):
        codec.FrameParser(Recorder(), max_frames=-1)
