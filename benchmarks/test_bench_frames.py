"""Micro-benchmarks of the frame codec and flow windows, compiled (``c``) vs pure (``py``)."""

from __future__ import annotations

import random

import pytest

from ytun import _frames_py

BUFFER_SIZE = 4 * 1024 * 1024


class NoopHandler:
    def on_data(self, stream_id, flags, payload):
        pass

    def on_window_update(self, stream_id, flags, delta):
        pass

    def on_ping(self, flags, value):
        pass

    def on_go_away(self, code):
        pass


def mixed_frames(size: int, seed: int = 1234) -> tuple[bytes, int]:
    """About ``size`` bytes of Data (64 B..64 KiB, log-uniform), Window Update and Ping
    frames, and how many frames that is."""
    rng = random.Random(seed)
    encode_frame, encode_header = _frames_py.encode_frame, _frames_py.encode_header
    parts, total, count = [], 0, 0
    filler = rng.randbytes(65536)
    while total < size:
        kind = rng.random()
        stream_id = rng.randrange(1, 2000, 2)
        if kind < 0.6:
            length = int(2 ** rng.uniform(6, 16))
            frame = encode_frame(0, 0, stream_id, filler[:length])
        elif kind < 0.85:
            frame = encode_header(1, 0, stream_id, rng.randrange(1, 1 << 20))
        else:
            frame = encode_header(2, rng.choice((1, 2)), 0, rng.randrange(1 << 32))
        parts.append(frame)
        total += len(frame)
        count += 1
    return b"".join(parts), count


MIXED, MIXED_FRAMES = mixed_frames(BUFFER_SIZE)


def test_encode_header(benchmark, codec):
    header = benchmark(codec.encode_header, 0, 0, 1, 65536)
    assert header == _frames_py.encode_header(0, 0, 1, 65536)


def test_decode_header(benchmark, codec):
    header = _frames_py.encode_header(1, 2, 3, 65536)
    assert benchmark(codec.decode_header, header) == (0, 1, 2, 3, 65536)


@pytest.mark.parametrize("chunk", [None, 65536], ids=["one-feed", "64KiB-reads"])
def test_parse_mixed_4mib(benchmark, codec, throughput, chunk):
    """Parse 4 MiB of mixed frames with a no-op handler, in one feed or in socket-sized
    reads (frames then straddle reads)."""
    step = chunk or len(MIXED)
    chunks = [MIXED[i : i + step] for i in range(0, len(MIXED), step)]
    handler = NoopHandler()

    def parse() -> int:
        parser = codec.FrameParser(handler)
        for piece in chunks:
            parser.feed(piece)
        return parser.buffered

    assert benchmark(parse) == 0
    benchmark.extra_info["frames"] = MIXED_FRAMES
    throughput(len(MIXED))


def test_flow_window_accounting(benchmark, codec):
    """10 000 rounds of ``receive_consumed`` on the receive side and ``take_send`` on the
    send side, with the window updates each answers."""
    rounds, size = 10_000, 16 * 1024

    def account() -> int:
        window = codec.FlowWindow()
        granted = 0
        for _ in range(rounds):
            granted += window.receive_consumed(size)
            if not window.take_send(size):
                window.add_send(262_144)
                window.take_send(size)
        return granted

    assert benchmark(account) > 0
    benchmark.extra_info["rounds per call"] = rounds
