"""The control path of the server (``ytun/tunnel/links.py``): refused CONNECTs cost
nothing that stays, and any number of them pipelined in one write is answered in a loop."""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest

from ytun import Server, ServerState

TIMEOUT = 10
REFUSED_STATUS = b"HTTP/1.1 502 Bad Gateway\r\n"


def connect(identifier: str) -> bytes:
    return (
        f"CONNECT /_controlPath/ HTTP/1.1\r\nHost: tunnel.test\r\n"
        f"X-Ktunnel-Identifier: {identifier}\r\n\r\n"
    ).encode()


async def read_answers(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    answers = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
        await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
        answers.append(head)
    return answers


@pytest.fixture
async def server():
    server = Server(refusal_burst=10**6)  # these tests refuse many from one address
    server.add_host("known.test", "KNOWN-SECRET")
    listener = await server.serve("127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    yield server
    await server.close(grace=0)


async def test_refused_identifiers_leave_no_state(server, caplog) -> None:
    """Issue 12 #1: every refused CONNECT used to store its (attacker-chosen) identifier."""
    changes = []
    server._links._on_change = changes.append
    batches, per_batch = 4, 250
    with caplog.at_level(logging.INFO, logger="ytun"):
        for _ in range(batches):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            identifiers = [secrets.token_urlsafe(3000) for _ in range(per_batch)]
            writer.write(b"".join(connect(identifier) for identifier in identifiers))
            answers = await read_answers(reader, per_batch)
            assert all(answer.startswith(REFUSED_STATUS) for answer in answers)
            writer.close()
    assert server._links.refused == batches * per_batch
    assert server._links._states == {}  # nothing kept for unknown identifiers
    assert len(changes) == batches * per_batch
    assert {(c.previous, c.current) for c in changes} == {(ServerState.UNKNOWN, ServerState.CLOSED)}
    assert all(c.label == "<unregistered client>" for c in changes)
    assert not any(identifier in caplog.text for identifier in identifiers)


async def test_pipelined_refused_connects_are_answered_without_recursion(server, caplog) -> None:
    """Issue 12 #6: ~330 refused CONNECTs in one write raised RecursionError."""
    count = 2000
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    with caplog.at_level(logging.WARNING):
        writer.write(connect("WRONG") * count + b"GET / HTTP/1.1\r\nHost: unknown.test\r\n\r\n")
        answers = await read_answers(reader, count + 1)
    writer.close()
    assert all(answer.startswith(REFUSED_STATUS) for answer in answers)
    assert not any(record.exc_info for record in caplog.records)
    assert not any(record.levelno >= logging.ERROR for record in caplog.records)


async def test_connections_beyond_max_connections_get_503(caplog) -> None:
    """Issue 12 #8: a cap on connections held, answered cleanly when reached."""
    server = Server(max_connections=3)
    listener = await server.serve("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    try:
        await wait_held(server, 3)
        with caplog.at_level(logging.WARNING, logger="ytun.server"):
            answers = []
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: any.test\r\n\r\n")
                answers.append(await asyncio.wait_for(reader.read(), TIMEOUT))
                writer.close()
        assert all(a.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") for a in answers)
        assert all(a.endswith(b"server at capacity, try again later\n") for a in answers)
        warnings = [r for r in caplog.records if "refusing connections" in r.getMessage()]
        assert len(warnings) == 1  # once per episode, not per connection
        _, writer = held.pop()
        writer.close()
        await wait_held(server, 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: unknown.test\r\n\r\n")
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert answer.startswith(b"HTTP/1.1 502")  # served again: routed, and unknown
        writer.close()
    finally:
        for _, writer in held:
            writer.close()
        await server.close(grace=0)


async def wait_held(server: Server, count: int) -> None:
    async def poll() -> None:
        while len(server._public) != count:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


def test_max_connections_defaults_below_the_descriptor_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    server = Server()
    assert 0 < server.max_connections < soft or soft == resource.RLIM_INFINITY
    with pytest.raises(ValueError):
        Server(max_connections=0)


def test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    import subprocess
    import sys

    script = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "low = min(256, soft)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))\n"
        "from ytun.tunnel.limits import raise_fd_limit\n"
        "before, after = raise_fd_limit()\n"
        "now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "expected = low if hard == resource.RLIM_INFINITY else hard\n"
        "assert (before, after, now) == (low, expected, expected), (before, after, now, hard)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_an_address_that_keeps_guessing_is_cut_off(caplog) -> None:
    """Unknown identifiers from one address beyond the bucket get 429 and a closed
    connection, so guesses cost a connection each at the bucket's rate."""
    server = Server(refusal_rate=0.001, refusal_burst=3)
    listener = await server.serve("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING, logger="ytun.server"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(connect("GUESS-1") * 3 + connect("GUESS-2") + connect("GUESS-3"))
            answers = await read_answers(reader, 4)
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(connect("GUESS-4"))
            answers += await read_answers(reader, 1)
            writer.close()
        statuses = [answer.split(b"\r\n", 1)[0] for answer in answers]
        assert (
            statuses == [b"HTTP/1.1 502 Bad Gateway"] * 3 + [b"HTTP/1.1 429 Too Many Requests"] * 2
        )
        logged = [r.getMessage() for r in caplog.records if "refused a client" in r.getMessage()]
        assert len(logged) == 3  # the cut-off ones are not logged one by one
        assert all("127.0.0.1" in line for line in logged)
        assert not any("GUESS" in r.getMessage() for r in caplog.records)
        assert server._links.refused == 5
    finally:
        await server.close(grace=0)
