"""Stream state transitions (hashicorp ``stream.go`` states), driven frame by frame
through the sans-I/O core: no socket, no event loop. Every test runs on both codecs."""

from __future__ import annotations

import pytest
from yamux_helpers import ACK, DATA, FIN, RST, SYN, WINDOW, CoreDriver, Frame, fast, frame

from ytun._const import INITIAL_WINDOW
from ytun.errors import StreamOpenTimeoutError, StreamResetError
from ytun.yamux.stream import StreamState

S = StreamState


def inbound(codec, **config):
    driver = CoreDriver(codec, config=fast(**config))
    driver.feed(frame(WINDOW, SYN, 1, 0))
    driver.sent()
    return driver, driver.inbound[0], driver.protocols[1]


def outbound(codec, **config):
    driver = CoreDriver(codec, client=True, config=fast(**config))
    stream, protocol = driver.open()
    driver.sent()
    return driver, stream, protocol


def fin(carrier: str, stream_id: int) -> bytes:
    return frame(WINDOW if carrier == "window" else DATA, FIN, stream_id, 0)


def test_outbound_init_syn_sent_established(codec):
    driver = CoreDriver(codec, client=True, config=fast())
    stream = driver.mux.open_stream()
    assert stream.state is S.SYN_SENT
    driver.feed(frame(WINDOW, ACK, 1, 0))
    assert stream.state is S.ESTABLISHED


def test_inbound_syn_received_becomes_established_with_our_ack(codec):
    _, stream, _ = inbound(codec)
    assert stream.state is S.ESTABLISHED


@pytest.mark.parametrize("carrier", ["window", "data"])
def test_local_then_remote_close(codec, carrier):
    driver, stream, protocol = inbound(codec)
    stream.write(b"bye")
    stream.write_eof()
    assert stream.state is S.ESTABLISHED  # the FIN waits behind the data
    assert driver.sent() == [Frame(DATA, 0, 1, 3, b"bye"), Frame(WINDOW, FIN, 1, 0)]
    assert stream.state is S.LOCAL_CLOSE
    driver.feed(frame(DATA, 0, 1, 2, b"ok"), fin(carrier, 1))
    driver.run()
    assert stream.state is S.CLOSED and stream.finished
    assert 1 not in driver.mux.streams
    assert protocol.events == [("made",), ("data", b"ok"), ("eof",), ("lost", None)]


@pytest.mark.parametrize("carrier", ["window", "data"])
def test_remote_then_local_close(codec, carrier):
    driver, stream, protocol = inbound(codec)
    driver.feed(fin(carrier, 1))
    assert stream.state is S.REMOTE_CLOSE and protocol.events[-1] == ("eof",)
    stream.write(b"still writable")  # half-close: our direction stays open
    stream.close()
    sent = driver.sent()
    assert sent[-1] == Frame(WINDOW, FIN, 1, 0) and sent[0].payload == b"still writable"
    driver.run()
    assert stream.state is S.CLOSED and stream.finished and protocol.lost == [None]


@pytest.mark.parametrize(
    "state", [S.SYN_SENT, S.ESTABLISHED, S.LOCAL_CLOSE, S.REMOTE_CLOSE], ids=str
)
@pytest.mark.parametrize("carrier", ["window", "data"])
def test_peer_rst_resets_from_any_open_state(codec, state, carrier):
    driver, stream, protocol = outbound(codec)
    if state is not S.SYN_SENT:
        driver.feed(frame(WINDOW, ACK, 1, 0))
    if state is S.LOCAL_CLOSE:
        stream.write_eof()
        driver.sent()
    if state is S.REMOTE_CLOSE:
        driver.feed(frame(WINDOW, FIN, 1, 0))
    assert stream.state is state
    driver.feed(frame(WINDOW if carrier == "window" else DATA, RST, 1, 0))
    driver.run()
    assert stream.state is S.RESET and stream.finished and 1 not in driver.mux.streams
    (error,) = protocol.lost
    assert isinstance(error, StreamResetError)
    assert driver.mux.unacked == 0
    assert driver.sent() == []  # an RST is not answered


def test_local_reset_sends_rst_and_drops_queued_data(codec):
    driver, stream, protocol = inbound(codec)
    stream.write(b"never sent")
    stream.abort()
    driver.run()
    assert stream.state is S.RESET and protocol.lost == [None]
    assert driver.sent() == [Frame(WINDOW, RST, 1, 0)]


def test_fin_answers_an_open_like_an_ack(codec):
    driver, stream, _ = outbound(codec)
    driver.feed(frame(DATA, FIN, 1, 0))
    assert stream.state is S.REMOTE_CLOSE
    assert driver.mux.unacked == 0 and driver.slots_freed == 1


def test_data_after_the_peer_closed_resets_the_stream(codec):
    driver, stream, protocol = inbound(codec)
    driver.feed(frame(WINDOW, FIN, 1, 0), frame(DATA, 0, 1, 4, b"late"))
    driver.run()
    assert stream.state is S.RESET
    assert isinstance(protocol.lost[0], StreamResetError)
    assert driver.sent() == [Frame(WINDOW, RST, 1, 0)]
    assert protocol.data == b""


def test_duplicate_fin_is_harmless(codec):
    driver, stream, protocol = inbound(codec)
    driver.feed(frame(WINDOW, FIN, 1, 0), frame(WINDOW, FIN, 1, 0))
    assert stream.state is S.REMOTE_CLOSE
    assert protocol.events.count(("eof",)) == 1


def test_paused_reader_gets_eof_after_the_buffered_data(codec):
    driver, stream, protocol = inbound(codec)
    stream.pause_reading()
    driver.feed(frame(DATA, 0, 1, 3, b"abc"), frame(DATA, FIN, 1, 3, b"def"))
    driver.run()
    assert stream.state is S.REMOTE_CLOSE and protocol.events == [("made",)]
    stream.resume_reading()
    driver.run()
    assert protocol.events[1:] == [("data", b"abc"), ("data", b"def"), ("eof",)]


def test_window_update_lets_queued_data_go(codec):
    driver, stream, _ = inbound(codec)
    stream.write(b"x" * (INITIAL_WINDOW + 10))
    sent = driver.sent()
    assert sum(len(f.payload) for f in sent) == INITIAL_WINDOW
    driver.feed(frame(WINDOW, 0, 1, 10))
    assert [f.payload for f in driver.sent()] == [b"x" * 10]


def test_open_timeout_resets_an_unanswered_stream(codec):
    driver, stream, protocol = outbound(codec, stream_open_timeout=5.0)
    (timer,) = driver.timers
    timer.fire()
    driver.run()
    assert stream.state is S.RESET and isinstance(protocol.lost[0], StreamOpenTimeoutError)
    assert driver.sent() == [Frame(WINDOW, RST, 1, 0)] and driver.mux.unacked == 0


def test_ack_cancels_the_open_timeout(codec):
    driver, _, _ = outbound(codec, stream_open_timeout=5.0)
    driver.feed(frame(WINDOW, ACK, 1, 0))
    assert driver.timers[0].cancelled


def test_close_timeout_resets_when_the_peer_never_closes(codec):
    driver, stream, _ = inbound(codec, stream_close_timeout=5.0)
    stream.close()
    assert driver.sent() == [Frame(WINDOW, FIN, 1, 0)] and stream.state is S.LOCAL_CLOSE
    (timer,) = driver.timers
    timer.fire()
    assert stream.state is S.RESET and driver.sent() == [Frame(WINDOW, RST, 1, 0)]


def test_data_arriving_after_close_is_credited_back(codec):
    driver, stream, protocol = inbound(codec)
    stream.close()
    driver.sent()
    block = b"z" * INITIAL_WINDOW
    driver.feed(frame(DATA, 0, 1, len(block), block))
    assert driver.sent() == [Frame(WINDOW, 0, 1, INITIAL_WINDOW)]
    assert protocol.data == b""


def test_protocol_error_in_data_received_resets_only_its_stream(codec):
    driver, stream, protocol = inbound(codec)

    def broken(data: bytes) -> None:
        raise RuntimeError("bug")

    protocol.data_received = broken  # type: ignore[method-assign]
    driver.feed(frame(WINDOW, SYN, 3, 0), frame(DATA, 0, 1, 1, b"a"))
    driver.run()
    assert stream.state is S.RESET and isinstance(protocol.lost[0], RuntimeError)
    assert driver.inbound[1].state is S.ESTABLISHED
