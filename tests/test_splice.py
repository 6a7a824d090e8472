"""``Pipe`` and ``PipeEnd`` joining two transports, and ``CloseAtOnce``.

Most tests drive a Pipe with recording fake transports, so every call it makes (write,
write_eof, close, abort, pause_reading, resume_reading) can be checked in order: bytes and
EOF that arrive before the second side exists, half-close in each direction, both EOFs,
loss with and without an error, and flow control passed across. One test joins two real
loopback TCP connections on the running loop (uvloop and the stock loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno

import pytest

from ytun.tunnel.splice import CloseAtOnce, Pipe, PipeEnd


class FakeTransport(asyncio.Transport):
    """Records what the pipe asks of it; ``calls`` keeps the order."""

    def __init__(self, *, eof_supported: bool = True) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.written = bytearray()
        self.eof_supported = eof_supported
        self.closing = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing, "write after close"
        self.calls.append("write")
        self.written += data

    def writelines(self, list_of_data) -> None:  # type: ignore[no-untyped-def, override]
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return self.eof_supported

    def write_eof(self) -> None:
        assert self.eof_supported
        self.calls.append("write_eof")

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading


def joined() -> tuple[Pipe, FakeTransport, FakeTransport]:
    """A pipe with both sides connected and the set-up calls forgotten."""
    pipe = Pipe()
    first, second = FakeTransport(), FakeTransport()
    pipe.sides[0].connection_made(first)
    pipe.sides[1].connection_made(second)
    first.calls.clear()
    second.calls.clear()
    return pipe, first, second


def test_the_two_sides_are_pipe_ends_of_this_pipe() -> None:
    pipe = Pipe()
    assert all(isinstance(side, PipeEnd) for side in pipe.sides)
    assert len(pipe.sides) == 2


# -- before the second side exists -------------------------------------------------------


@pytest.mark.parametrize("first_side", [0, 1])
def test_the_first_side_is_not_read_until_the_second_exists(first_side: int) -> None:
    pipe = Pipe()
    first, second = FakeTransport(), FakeTransport()
    pipe.sides[first_side].connection_made(first)
    assert not first.reading
    pipe.sides[1 - first_side].connection_made(second)
    assert first.reading
    assert second.reading


def test_early_bytes_are_kept_and_delivered_in_order_when_the_second_side_arrives() -> None:
    # uvloop starts reading right after connection_made, even after pause_reading().
    pipe = Pipe()
    first, second = FakeTransport(), FakeTransport()
    pipe.sides[0].connection_made(first)
    pipe.sides[0].data_received(b"GET / HTTP/1.1\r\n")
    pipe.sides[0].data_received(b"Host: x\r\n\r\n")
    assert not first.reading
    pipe.sides[1].connection_made(second)
    assert bytes(second.written) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert first.reading
    # Later bytes follow directly, and the early ones are not sent twice.
    pipe.sides[0].data_received(b"more")
    assert bytes(second.written) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\nmore"


def test_eof_before_the_second_side_half_closes_it_after_the_early_bytes() -> None:
    pipe = Pipe()
    first, second = FakeTransport(), FakeTransport()
    pipe.sides[0].connection_made(first)
    pipe.sides[0].data_received(b"request")
    assert pipe.sides[0].eof_received() is True
    pipe.sides[1].connection_made(second)
    assert second.calls == ["write", "write_eof"]
    assert bytes(second.written) == b"request"
    assert not second.closing
    # The second side can still answer through the first.
    pipe.sides[1].data_received(b"answer")
    assert bytes(first.written) == b"answer"


def test_eof_before_a_second_side_without_half_close_closes_it_after_the_early_bytes() -> None:
    pipe = Pipe()
    first, second = FakeTransport(), FakeTransport(eof_supported=False)
    pipe.sides[0].connection_made(first)
    pipe.sides[0].data_received(b"request")
    pipe.sides[0].eof_received()
    pipe.sides[1].connection_made(second)
    assert second.calls[:2] == ["write", "close"]
    assert bytes(second.written) == b"request"


def test_a_first_side_lost_before_the_second_exists_closes_the_second_on_arrival() -> None:
    pipe = Pipe()
    first, second = FakeTransport(), FakeTransport()
    pipe.sides[0].connection_made(first)
    pipe.sides[0].data_received(b"last words")
    pipe.sides[0].connection_lost(None)
    pipe.sides[1].connection_made(second)
    assert bytes(second.written) == b"last words"
    assert second.closing
    assert "abort" not in second.calls


def test_a_first_side_lost_with_an_error_before_the_second_exists_aborts_it() -> None:
    pipe = Pipe()
    first, second = FakeTransport(), FakeTransport()
    pipe.sides[0].connection_made(first)
    pipe.sides[0].connection_lost(ConnectionResetError())
    pipe.sides[1].connection_made(second)
    assert "abort" in second.calls


# -- both sides connected ----------------------------------------------------------------


def test_bytes_pass_both_ways() -> None:
    pipe, first, second = joined()
    pipe.sides[0].data_received(b"ping")
    pipe.sides[1].data_received(b"pong")
    pipe.sides[0].data_received(b"!")
    assert bytes(second.written) == b"ping!"
    assert bytes(first.written) == b"pong"


@pytest.mark.parametrize("ending", [0, 1])
def test_eof_on_one_side_half_closes_the_other_and_the_reverse_direction_still_flows(
    ending: int,
) -> None:
    pipe, first, second = joined()
    transports = (first, second)
    ended, other = transports[ending], transports[1 - ending]
    assert pipe.sides[ending].eof_received() is True
    assert other.calls == ["write_eof"]
    assert not other.closing
    assert not ended.closing
    pipe.sides[1 - ending].data_received(b"still answering")
    assert bytes(ended.written) == b"still answering"


def test_eof_to_a_side_that_cannot_half_close_closes_it() -> None:
    pipe = Pipe()
    first, second = FakeTransport(), FakeTransport(eof_supported=False)
    pipe.sides[0].connection_made(first)
    pipe.sides[1].connection_made(second)
    pipe.sides[0].eof_received()
    assert second.closing
    assert "write_eof" not in second.calls


@pytest.mark.parametrize("first_to_end", [0, 1])
def test_eof_on_both_sides_closes_both(first_to_end: int) -> None:
    pipe, first, second = joined()
    pipe.sides[first_to_end].eof_received()
    assert not first.closing
    assert not second.closing
    pipe.sides[1 - first_to_end].eof_received()
    assert first.closing
    assert second.closing
    assert "abort" not in first.calls + second.calls


def test_eof_on_a_side_already_closing_is_not_passed_on() -> None:
    pipe, _first, second = joined()
    second.close()
    second.calls.clear()
    pipe.sides[0].eof_received()
    assert "write_eof" not in second.calls


@pytest.mark.parametrize("lost", [0, 1])
def test_loss_without_an_error_closes_the_other_side(lost: int) -> None:
    pipe, first, second = joined()
    other = (first, second)[1 - lost]
    pipe.sides[lost].connection_lost(None)
    assert other.calls == ["close"]


@pytest.mark.parametrize("lost", [0, 1])
def test_loss_with_an_error_aborts_the_other_side(lost: int) -> None:
    pipe, first, second = joined()
    other = (first, second)[1 - lost]
    pipe.sides[lost].connection_lost(ConnectionResetError("reset by peer"))
    assert other.calls == ["abort"]


def test_after_both_sides_are_lost_nothing_more_is_called() -> None:
    pipe, first, second = joined()
    pipe.sides[0].connection_lost(None)
    pipe.sides[1].connection_lost(None)
    calls = (list(first.calls), list(second.calls))
    pipe.close()
    pipe.abort()
    assert (first.calls, second.calls) == calls


# -- flow control ------------------------------------------------------------------------


@pytest.mark.parametrize("full", [0, 1])
def test_a_side_that_cannot_keep_up_pauses_reading_on_the_other(full: int) -> None:
    pipe, first, second = joined()
    other = (first, second)[1 - full]
    pipe.sides[full].pause_writing()
    assert other.calls == ["pause_reading"]
    assert not other.reading
    pipe.sides[full].resume_writing()
    assert other.calls == ["pause_reading", "resume_reading"]
    assert other.reading


def test_flow_control_is_not_passed_to_a_closing_side() -> None:
    pipe, _first, second = joined()
    second.close()
    second.calls.clear()
    pipe.sides[0].pause_writing()
    pipe.sides[0].resume_writing()
    assert second.calls == []


def test_flow_control_before_the_second_side_exists_is_harmless() -> None:
    pipe = Pipe()
    first, second = FakeTransport(), FakeTransport()
    pipe.sides[0].connection_made(first)
    pipe.sides[0].pause_writing()
    pipe.sides[0].resume_writing()
    pipe.sides[1].connection_made(second)
    assert first.reading


# -- closing from outside ----------------------------------------------------------------


def test_pipe_close_closes_both_sides() -> None:
    pipe, first, second = joined()
    pipe.close()
    assert first.calls == ["close"]
    assert second.calls == ["close"]


def test_pipe_abort_aborts_both_sides() -> None:
    pipe, first, second = joined()
    pipe.abort()
    assert first.calls == ["abort"]
    assert second.calls == ["abort"]


def test_pipe_close_with_one_side_closes_that_side() -> None:
    pipe = Pipe()
    first = FakeTransport()
    pipe.sides[0].connection_made(first)
    pipe.close()
    assert first.closing


# -- CloseAtOnce -------------------------------------------------------------------------


def test_close_at_once_closes_the_stream_as_soon_as_it_is_made() -> None:
    protocol = CloseAtOnce()
    transport = FakeTransport()
    protocol.connection_made(transport)
    assert transport.calls == ["close"]


def test_close_at_once_drops_bytes_still_in_flight() -> None:
    protocol = CloseAtOnce()
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(b"late answer")
    protocol.eof_received()
    protocol.connection_lost(None)
    assert transport.calls == ["close"]
    assert transport.written == b""


# -- real sockets ------------------------------------------------------------------------


class Watched(asyncio.Protocol):
    """Passes every event on to a pipe end and notes when the connection is gone."""

    def __init__(self, end: PipeEnd, lost: asyncio.Future[Exception | None]) -> None:
        self.end = end
        self.lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.end.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.end.data_received(data)

    def eof_received(self) -> bool:
        return self.end.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.end.connection_lost(exc)
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.end.pause_writing()

    def resume_writing(self) -> None:
        self.end.resume_writing()


async def within(awaitable):  # type: ignore[no-untyped-def]
    """``awaitable``'s result, failing the test instead of hanging if it never comes."""
    return await asyncio.wait_for(awaitable, 5)


async def test_pipe_joins_two_tcp_connections_both_ways_with_half_close() -> None:
    loop = asyncio.get_running_loop()
    pipe = Pipe()
    lost: list[asyncio.Future[Exception | None]] = [loop.create_future() for _ in range(2)]
    servers = [
        await loop.create_server(
            lambda side=side: Watched(pipe.sides[side], lost[side]), "127.0.0.1", 0
        )
        for side in (0, 1)
    ]
    addresses = [server.sockets[0].getsockname() for server in servers]
    writers: list[asyncio.StreamWriter] = []
    try:
        reader_a, writer_a = await asyncio.open_connection(*addresses[0])
        writers.append(writer_a)
        # Sent before the other connection exists: the pipe must keep it.
        writer_a.write(b"early bytes")
        await writer_a.drain()
        reader_b, writer_b = await asyncio.open_connection(*addresses[1])
        writers.append(writer_b)

        assert await within(reader_b.readexactly(11)) == b"early bytes"
        writer_b.write(b"back")
        assert await within(reader_a.readexactly(4)) == b"back"
        # More than the socket buffers hold, so flow control is exercised on the way.
        writer_a.write(b"x" * 2_000_000)
        assert await within(reader_b.readexactly(2_000_000)) == b"x" * 2_000_000

        # A half-closes: B sees EOF and can still answer.
        writer_a.write_eof()
        assert await within(reader_b.read()) == b""
        writer_b.write(b"answer after eof")
        assert await within(reader_a.readexactly(16)) == b"answer after eof"

        # B half-closes too: A sees EOF, and the pipe closes both server-side transports.
        writer_b.write_eof()
        assert await within(reader_a.read()) == b""
        assert await within(asyncio.gather(*lost)) == [None, None]
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):  # the peer may already have reset it
                await within(writer.wait_closed())
        for server in servers:
            server.close()
            await server.wait_closed()


class ResetTransport(FakeTransport):
    """A socket transport whose peer already reset the connection: the stock asyncio
    loop's write_eof() calls shutdown(), which fails with ENOTCONN."""

    def write_eof(self) -> None:
        self.calls.append("write_eof")
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")


def test_a_half_close_towards_a_reset_connection_aborts_it_without_raising() -> None:
    pipe = Pipe()
    first, second = FakeTransport(), ResetTransport()
    pipe.sides[0].connection_made(first)
    pipe.sides[1].connection_made(second)
    keep_open = pipe.sides[0].eof_received()  # the stream's FIN, passed on to the socket
    assert keep_open is True
    assert second.calls[-2:] == ["write_eof", "abort"]


def test_an_early_eof_towards_a_reset_connection_aborts_it_without_raising() -> None:
    pipe = Pipe()
    first, second = FakeTransport(), ResetTransport()
    pipe.sides[0].connection_made(first)
    pipe.sides[0].eof_received()  # before the second side exists
    pipe.sides[1].connection_made(second)
    assert "abort" in second.calls
