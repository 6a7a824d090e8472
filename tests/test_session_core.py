"""The sans-I/O yamux core (``ytun.yamux.core.Multiplexer``) fed frames directly: no
socket, no event loop. The hooks are recorded by ``CoreDriver``. Every test runs on both
codecs."""

from __future__ import annotations

import pytest
from yamux_helpers import (
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    PING,
    RST,
    SYN,
    WINDOW,
    CoreDriver,
    Frame,
    fast,
    frame,
)

from ytun._const import INITIAL_WINDOW
from ytun.errors import ProtocolError, SessionClosedError, StreamLimitError
from ytun.yamux.stream import StreamState


def test_inbound_syn_registers_and_acknowledges_at_once(codec):
    driver = CoreDriver(codec, config=fast(recv_window=2 * INITIAL_WINDOW))
    driver.feed(frame(WINDOW, SYN, 1, 0))
    (stream,) = driver.inbound
    assert stream.stream_id == 1 and stream.state is StreamState.ESTABLISHED
    assert driver.mux.streams == {1: stream}
    assert driver.protocols[1].events == [("made",)]
    assert driver.sent() == [Frame(WINDOW, ACK, 1, INITIAL_WINDOW)]


@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
def test_inbound_syn_with_our_parity_is_a_protocol_error(codec, client):
    driver = CoreDriver(codec, client=client, config=fast())
    with pytest.raises(ProtocolError, match="parity"):
        driver.feed(frame(WINDOW, SYN, 1 if client else 2, 0))


def test_second_syn_for_a_stream_is_a_protocol_error(codec):
    driver = CoreDriver(codec, config=fast())
    driver.feed(frame(WINDOW, SYN, 1, 0))
    with pytest.raises(ProtocolError, match="twice"):
        driver.feed(frame(DATA, SYN, 1, 0))


def test_syn_with_rst_leaves_nothing_behind(codec):
    driver = CoreDriver(codec, config=fast())
    driver.feed(frame(WINDOW, SYN | RST, 1, 0))
    assert not driver.inbound and not driver.mux.streams and driver.sent() == []


def test_syn_data_beyond_the_initial_window_is_a_protocol_error(codec):
    driver = CoreDriver(codec, config=fast())
    payload = b"x" * (INITIAL_WINDOW + 1)
    with pytest.raises(ProtocolError, match="initial window"):
        driver.feed(frame(DATA, SYN, 1, len(payload), payload))


@pytest.mark.parametrize("limit", ["backlog", "max_streams", "go_away"])
def test_refused_inbound_streams_get_rst(codec, limit):
    config = fast(accept_backlog=2, max_streams=2)
    driver = CoreDriver(codec, config=config, attach=limit != "max_streams")
    if limit == "go_away":
        driver.mux.local_go_away = True
        refused = [1, 3, 5]
    else:
        driver.feed(frame(WINDOW, SYN, 1, 0), frame(WINDOW, SYN, 3, 0))
        refused = [5]
        if limit == "backlog":
            driver = CoreDriver(codec, config=config, attach=False)
            driver.feed(frame(WINDOW, SYN, 1, 0), frame(WINDOW, SYN, 3, 0))
    driver.sent()
    driver.feed(*(frame(WINDOW, SYN, stream_id, 0) for stream_id in refused))
    assert driver.sent() == [Frame(WINDOW, RST, stream_id, 0) for stream_id in refused]
    assert all(stream_id not in driver.mux.streams for stream_id in refused)


@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
def test_open_allocates_ids_of_our_parity_and_sends_syn(codec, client):
    driver = CoreDriver(codec, client=client, config=fast())
    first, _ = driver.open()
    second, _ = driver.open()
    base = 1 if client else 2
    assert (first.stream_id, second.stream_id) == (base, base + 2)
    assert first.state is StreamState.SYN_SENT and driver.mux.unacked == 2
    assert driver.sent() == [Frame(WINDOW, SYN, base, 0), Frame(WINDOW, SYN, base + 2, 0)]


def test_ack_releases_the_open_slot(codec):
    driver = CoreDriver(codec, client=True, config=fast(max_unacked_streams=1))
    stream, _ = driver.open()
    with pytest.raises(StreamLimitError):
        driver.open()
    driver.feed(frame(WINDOW, ACK, stream.stream_id, 0))
    assert stream.state is StreamState.ESTABLISHED
    assert driver.mux.unacked == 0 and driver.slots_freed == 1
    driver.open()


def test_max_streams_refuses_opens(codec):
    driver = CoreDriver(codec, client=True, config=fast(max_streams=1))
    driver.open()
    with pytest.raises(StreamLimitError, match="maximum"):
        driver.open()


def test_frames_for_unknown_streams_are_ignored(codec):
    driver = CoreDriver(codec, config=fast())
    driver.feed(
        frame(DATA, 0, 7, 3, b"abc"), frame(WINDOW, 0, 9, 100), frame(WINDOW, FIN | RST, 11, 0)
    )
    assert not driver.mux.streams and driver.sent() == [] and driver.output_calls == 0


def test_ping_is_answered_and_pongs_are_bounded_per_turn(codec):
    driver = CoreDriver(codec, config=fast(pong_backlog=3))
    driver.feed(*(frame(PING, SYN, 0, value) for value in range(5)))
    assert driver.sent() == [Frame(PING, ACK, 0, value) for value in range(3)]
    driver.feed(frame(PING, SYN, 0, 9))  # a new turn: the budget is back
    assert driver.sent() == [Frame(PING, ACK, 0, 9)]


def test_pong_and_go_away_reach_the_owner(codec):
    driver = CoreDriver(codec, config=fast())
    driver.feed(frame(PING, ACK, 0, 42), frame(GO_AWAY, 0, 0, 0))
    assert driver.pongs == [42] and driver.go_aways == [0] and driver.mux.remote_go_away
    driver.feed(frame(GO_AWAY, 0, 0, 2))
    assert driver.go_aways == [0, 2]


def test_output_puts_control_first_then_data_round_robin(codec):
    driver = CoreDriver(codec, client=True, config=fast(max_frame_payload=4))
    first, _ = driver.open()
    second, _ = driver.open()
    driver.sent()
    first.write(b"aaaaaaaa")
    second.write(b"bbbb")
    driver.feed(frame(PING, SYN, 0, 1))
    sent = driver.sent()
    assert [(f.type, f.stream_id, f.payload) for f in sent] == [
        (PING, 0, b""),
        (DATA, 1, b"aaaa"),
        (DATA, 3, b"bbbb"),
        (DATA, 1, b"aaaa"),
    ]


def test_data_beyond_the_receive_window_is_a_protocol_error(codec):
    driver = CoreDriver(codec, config=fast())
    driver.feed(frame(WINDOW, SYN, 1, 0))
    driver.protocols[1].transport.pause_reading()
    block = b"x" * INITIAL_WINDOW
    driver.feed(frame(DATA, 0, 1, len(block), block))
    with pytest.raises(ProtocolError, match="window"):
        driver.feed(frame(DATA, 0, 1, 1, b"y"))


def test_close_all_ends_every_stream_once(codec):
    driver = CoreDriver(codec, config=fast())
    driver.feed(frame(WINDOW, SYN, 1, 0), frame(WINDOW, SYN, 3, 0))
    error = SessionClosedError("gone")
    driver.mux.close_all(error)
    driver.mux.close_all(error)
    driver.run()
    assert not driver.mux.streams and driver.sent() == []
    for protocol in driver.protocols.values():
        assert protocol.lost == [error]
    assert all(stream.state is StreamState.CLOSED for stream in driver.inbound)
    driver.feed(frame(WINDOW, SYN, 5, 0))  # a closed core refuses new streams
    assert driver.sent() == [Frame(WINDOW, RST, 5, 0)]


def test_byte_by_byte_feeding_gives_the_same_result(codec):
    frames = [
        frame(WINDOW, SYN, 1, 0),
        frame(DATA, 0, 1, 5, b"hello"),
        frame(PING, SYN, 0, 7),
        frame(DATA, FIN, 1, 1, b"!"),
    ]
    whole, split = CoreDriver(codec, config=fast()), CoreDriver(codec, config=fast())
    whole.feed(*frames)
    for byte in b"".join(frames):
        split.feed(bytes([byte]))
    whole.run()
    split.run()
    assert whole.protocols[1].events == split.protocols[1].events
    assert whole.protocols[1].data == b"hello!"
    assert whole.sent() == split.sent()
