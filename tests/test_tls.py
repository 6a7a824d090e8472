"""The server's TLS listener (``ytun/tunnel/tls.py``): TLS connections are served as
before; a plain-HTTP request to the TLS port gets a plain answer and one log line, where
asyncio's own TLS listener would drop it without a word."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest
import trustme
from tunnel_helpers import Tunnel

TIMEOUT = 10


@pytest.fixture
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "app.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def plain_request(port: int, host: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


async def tls_request(port: int, host: str, context: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    try:
        writer.write(
            f"GET /?echo=tls HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


async def test_plain_http_to_the_tls_port_is_answered_and_logged_once(contexts, caplog) -> None:
    server_ctx, client_ctx = contexts
    async with Tunnel(server_ssl=server_ctx, client_ssl=client_ctx) as t:
        with caplog.at_level(logging.WARNING, logger="ytun.server"):
            answers = [await plain_request(t.port, t.host) for _ in range(3)]
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert answer.endswith(
                b"this port speaks TLS: use https:// (the request was sent in plain text)\n"
            )
        logged = [
            r for r in caplog.records if "plain-HTTP request reached the TLS port" in r.getMessage()
        ]
        assert len(logged) == 1
        # TLS on the same port still works, through the tunnel, after the plain ones.
        answer = await tls_request(t.port, t.host, client_ctx)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"tls")


async def test_a_failed_handshake_is_not_an_error(contexts, caplog) -> None:
    server_ctx, _ = contexts
    untrusting = ssl.create_default_context()  # does not trust the test CA
    async with Tunnel(server_ssl=server_ctx, client_ssl=contexts[1]) as t:
        with caplog.at_level(logging.WARNING), pytest.raises(ssl.SSLError):
            await tls_request(t.port, t.host, untrusting)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        answer = await tls_request(t.port, t.host, contexts[1])
        assert answer.startswith(b"HTTP/1.1 200")


async def test_a_silent_connection_is_closed_after_the_first_byte_timeout(contexts) -> None:
    from ytun import Server

    server = Server()
    listener = await server.serve("127.0.0.1", 0, ssl=contexts[0])
    listener._first_byte_timeout = 0.2
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed, not held
        writer.close()
    finally:
        await server.close(grace=0)
