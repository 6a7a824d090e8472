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
    server = Server()
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
