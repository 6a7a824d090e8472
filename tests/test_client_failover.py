"""A client given several servers: a failed attempt moves to the next one at once (the
backoff is asked only after a whole round failed), and a session that ends moves the
client to the next server; ``--server`` repeats or takes a comma list."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web
from tunnel_helpers import origin_app

from ytun import Client, Server
from ytun.cli import UsageError, build_parser, client_config
from ytun.tunnel.client import ClientState, ExponentialBackoff


class GiveUpAfter:
    """A backoff that allows ``rounds`` waits, then gives up (no time is spent)."""

    def __init__(self, rounds: int) -> None:
        self.left = rounds
        self.asked = 0

    def next_delay(self) -> float | None:
        self.asked += 1
        if self.left <= 0:
            return None
        self.left -= 1
        return 0.01

    def reset(self) -> None:
        pass


def dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once it is closed


async def serving(identifier: str) -> tuple[Server, str]:
    server = Server(access_log=None)
    server.add_host("app.test", identifier)
    listener = await server.serve("127.0.0.1", 0)
    return server, f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"


async def test_a_dead_server_in_the_list_is_skipped_without_waiting_for_the_backoff() -> None:
    server, address = await serving("secret")
    backoff = GiveUpAfter(0)  # any wait would end the client
    client = Client(f"{dead_address()}, {dead_address()},{address}", "secret", backoff=backoff)
    task = asyncio.ensure_future(client.start())
    try:
        await client.wait_connected(timeout=10)
        assert server.is_connected("secret")
        assert backoff.asked == 0
    finally:
        await client.close(grace=0)
        await asyncio.wait_for(task, 10)
        await server.close(grace=0)


async def test_after_a_whole_round_fails_the_backoff_decides() -> None:
    backoff = GiveUpAfter(1)
    changes = []
    client = Client(
        f"{dead_address()},{dead_address()}",
        "secret",
        backoff=backoff,
        on_state_change=changes.append,
    )
    await asyncio.wait_for(client.start(), 10)
    # Two rounds of two addresses with one wait between them; then the backoff gave up
    # (the fifth CONNECTING is the attempt it refused).
    assert backoff.asked == 2
    assert sum(c.current is ClientState.CONNECTING for c in changes) == 5
    assert changes[-1].current is ClientState.CLOSED


async def test_when_the_server_goes_the_client_moves_to_the_next_one() -> None:
    runner = web.AppRunner(origin_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    origin = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    first, first_address = await serving("secret")
    second, second_address = await serving("secret")
    client = Client(
        f"{first_address},{second_address}",
        "secret",
        local_addr=origin,
        backoff=ExponentialBackoff(initial=0.05, maximum=0.2),
    )
    task = asyncio.ensure_future(client.start())
    try:
        await client.wait_connected(timeout=10)
        assert first.is_connected("secret") and not second.is_connected("secret")
        await first.close(grace=0)

        async def moved() -> None:
            while not second.is_connected("secret"):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(moved(), 10)
    finally:
        await client.close(grace=0)
        await asyncio.wait_for(task, 10)
        await second.close(grace=0)
        await runner.cleanup()


def test_server_flags_repeat_or_take_a_comma_list() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["client", "--server", "a.example:443", "--server", "b.example:443, c.example:443"]
    )
    config = client_config(args, {"YTUN_IDENTIFIER": "secret"})
    assert config.server == "a.example:443,b.example:443,c.example:443"
    for bad in ("a.example:443,,b.example:443", "a.example:443,not an address"):
        args = parser.parse_args(["client", "--server", bad])
        with pytest.raises(UsageError):
            client_config(args, {"YTUN_IDENTIFIER": "secret"})
