"""The tunnel client's life cycle (koding/tunnel §3.3 and TestNoClient / TestNoHost /
TestReconnectClient): client and server state events, callbacks, reconnecting, the
fetch_* callables, the backoff policy, constructor checks and closing at any moment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from tunnel_helpers import Tunnel

from ytun import (
    Client,
    ClientState,
    ClientStateChange,
    ExponentialBackoff,
    IdentifierRefusedError,
    RedialAbortedError,
    Server,
    ServerState,
)
from ytun.tunnel import client as client_module
from ytun.tunnel import koding as proto

TIMEOUT = 10
U, S, C, OK, D, X = (
    ClientState.UNKNOWN,
    ClientState.STARTED,
    ClientState.CONNECTING,
    ClientState.CONNECTED,
    ClientState.DISCONNECTED,
    ClientState.CLOSED,
)
FAST = {"backoff": ExponentialBackoff(initial=0.02, maximum=0.1)}


def pairs(changes: list) -> list[tuple]:
    return [(change.previous, change.current) for change in changes]


async def wait_for_condition(condition: Callable[[], bool], timeout: float = 5) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def dead_address() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@contextlib.asynccontextmanager
async def tunnel_server(**kwargs) -> AsyncIterator[tuple[Server, int]]:
    server = Server(**kwargs)
    listener = await server.serve("127.0.0.1", 0)
    try:
        yield server, listener.sockets[0].getsockname()[1]
    finally:
        await server.close(grace=0)


async def get_echo(tunnel: Tunnel, text: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{tunnel.url}/?echo={text}",
            headers={"Host": tunnel.host},
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        ) as response,
    ):
        assert response.status == 200
        return await response.text()


# -- states ----------------------------------------------------------------------------


async def test_client_states_through_on_state_change():
    changes: list[ClientStateChange] = []
    tunnel = Tunnel(client_kwargs={"on_state_change": changes.append})
    async with tunnel:
        assert pairs(changes) == [(U, S), (S, C), (C, OK)]
        assert tunnel.client.state is OK
        assert str(changes[-1]) == "Connecting->Connected"
        await tunnel.client.close(grace=1)
        await asyncio.wait_for(tunnel.client_task, TIMEOUT)
        assert pairs(changes) == [(U, S), (S, C), (C, OK), (OK, D), (D, X)]
        assert tunnel.client.state is X


async def test_client_states_through_the_async_iterator():
    async with tunnel_server() as (server, port):
        server.add_host("app.test", "SECRET-ITER")
        client = Client(f"127.0.0.1:{port}", "SECRET-ITER", **FAST)
        seen: list[ClientStateChange] = []

        changes = client.state_changes()  # listening from here, before any iteration

        async def collect() -> None:
            async for change in changes:
                seen.append(change)
                if change.current is OK:
                    await client.close(grace=1)

        starting = asyncio.ensure_future(client.start())  # runs before collect() does
        collector = asyncio.ensure_future(collect())
        await asyncio.wait_for(starting, TIMEOUT)
        await asyncio.wait_for(collector, TIMEOUT)  # the iterator ends at Closed
        assert pairs(seen) == [(U, S), (S, C), (C, OK), (OK, D), (D, X)]


async def test_server_states_through_the_listener_and_the_async_iterator():
    server_changes = []
    server = Server(on_state_change=server_changes.append)
    iterated = server.state_changes()  # listening from here, before any iteration
    tunnel = Tunnel(server=server)
    async with tunnel:
        assert [(c.previous, c.current) for c in server_changes] == [
            (ServerState.UNKNOWN, ServerState.CONNECTED)
        ]
        assert server_changes[0].label == tunnel.host
        await tunnel.client.close(grace=1)
        await asyncio.wait_for(tunnel.client_task, TIMEOUT)
        await wait_for_condition(lambda: len(server_changes) == 2)
        assert [(c.previous, c.current) for c in server_changes] == [
            (ServerState.UNKNOWN, ServerState.CONNECTED),
            (ServerState.CONNECTED, ServerState.CLOSED),
        ]
        assert all(c.label == tunnel.host for c in server_changes)
        assert tunnel.identifier not in repr(server_changes)
        seen = [await asyncio.wait_for(anext(iterated), TIMEOUT) for _ in range(2)]
        assert seen == server_changes
        await iterated.aclose()


async def test_server_clients_lists_the_host_label_never_the_identifier():
    async with Tunnel() as tunnel:
        tunnel.server.add_host("second.test", tunnel.identifier)
        clients = tunnel.server.clients
        assert len(clients) == 1
        info = clients[0]
        assert info.label == tunnel.host
        assert info.peer is not None and info.peer[0] == "127.0.0.1"
        assert abs(info.connected_at - time.time()) < 60
        assert info.streams >= 1  # the control stream
        assert tunnel.identifier not in repr(clients)
        assert tunnel.server.is_connected(tunnel.identifier)
        await tunnel.client.close(grace=1)
        await asyncio.wait_for(tunnel.client_task, TIMEOUT)
        await wait_for_condition(lambda: tunnel.server.clients == [])


# -- no host ---------------------------------------------------------------------------


class GiveUp:
    """A backoff that never retries."""

    def __init__(self) -> None:
        self.asked = 0
        self.resets = 0

    def next_delay(self) -> float | None:
        self.asked += 1
        return None

    def reset(self) -> None:
        self.resets += 1


@pytest.mark.parametrize(
    "backoff",
    [lambda: ExponentialBackoff(max_attempts=0), GiveUp],
    ids=["max_attempts_0", "next_delay_none"],
)
async def test_no_host_gives_up(backoff):
    server_changes = []
    async with tunnel_server(on_state_change=server_changes.append) as (server, port):
        server.add_host("someone-else.test", "OTHER")
        changes: list[ClientStateChange] = []
        client = Client(
            f"127.0.0.1:{port}", "UNKNOWN-SECRET", backoff=backoff(), on_state_change=changes.append
        )
        await asyncio.wait_for(client.start(), TIMEOUT)
        assert client.state is X
        assert pairs(changes) == [(U, S), (S, C), (C, C), (C, X)]
        refused = changes[2].error
        assert isinstance(refused, IdentifierRefusedError)
        assert str(refused) == "the server does not know this identifier"
        assert "UNKNOWN-SECRET" not in str(refused)
        assert isinstance(changes[-1].error, RedialAbortedError)
        assert [(c.previous, c.current) for c in server_changes] == [
            (ServerState.UNKNOWN, ServerState.CLOSED)
        ]
        assert "UNKNOWN-SECRET" not in repr(server_changes)
        if isinstance(client.backoff, GiveUp):
            assert client.backoff.asked == 1


async def test_unreachable_server_with_a_limited_backoff():
    changes: list[ClientStateChange] = []
    client = Client(
        dead_address(),
        "X",
        on_state_change=changes.append,
        backoff=ExponentialBackoff(initial=0.01, max_attempts=3),
    )
    await asyncio.wait_for(client.start(), TIMEOUT)
    assert pairs(changes) == [(U, S), (S, C), (C, C), (C, C), (C, C), (C, C), (C, X)]
    assert all(isinstance(c.error, OSError) for c in changes[2:6])
    assert all("cannot reach the server at 127.0.0.1:" in str(c.error) for c in changes[2:6])
    assert isinstance(changes[-1].error, RedialAbortedError)


# -- reconnecting ----------------------------------------------------------------------


async def test_reconnects_after_the_server_drops_the_session():
    changes: list[ClientStateChange] = []
    connects: list[int] = []
    server = Server(
        on_state_change=lambda change: (
            connects.append(1) if change.current is ServerState.CONNECTED else None
        )
    )
    tunnel = Tunnel(server=server, client_kwargs={"on_state_change": changes.append})
    async with tunnel:
        assert await get_echo(tunnel, "before") == "before"
        tunnel.server.link_for(tunnel.server.registry.key_for(tunnel.identifier)).session.abort()
        await wait_for_condition(lambda: len(connects) == 2 and changes[-1].current is OK)
        assert pairs(changes) == [(U, S), (S, C), (C, OK), (OK, D), (D, C), (C, OK)]
        assert changes[3].error is not None
        await tunnel.wait_server_sees_client()
        assert await get_echo(tunnel, "after") == "after"


async def test_start_again_after_close():
    """koding's TestReconnectClient: close, start again, traffic flows again."""
    async with Tunnel() as tunnel:
        await tunnel.client.close(grace=1)
        await asyncio.wait_for(tunnel.client_task, TIMEOUT)
        await wait_for_condition(lambda: not tunnel.server.is_connected(tunnel.identifier))
        tunnel.client_task = asyncio.ensure_future(tunnel.client.start())
        await tunnel.client.wait_connected(TIMEOUT)
        await tunnel.wait_server_sees_client()
        assert await get_echo(tunnel, "again") == "again"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_fetch_callables_are_asked_on_every_attempt(kind):
    async with tunnel_server() as (server, port):
        server.add_host("fetch.test", "FETCHED-ID")
        good, dead = f"127.0.0.1:{port}", dead_address()
        asked = {"addr": 0, "id": 0}

        def server_addr() -> str:
            asked["addr"] += 1
            return dead if asked["addr"] <= 2 else good

        def identifier() -> str:
            asked["id"] += 1
            return "FETCHED-ID"

        async def async_server_addr() -> str:
            await asyncio.sleep(0)
            return server_addr()

        async def async_identifier() -> str:
            await asyncio.sleep(0)
            return identifier()

        if kind == "async":
            client = Client(
                fetch_server_addr=async_server_addr, fetch_identifier=async_identifier, **FAST
            )
        else:
            client = Client(fetch_server_addr=server_addr, fetch_identifier=identifier, **FAST)
        task = asyncio.ensure_future(client.start())
        try:
            await client.wait_connected(TIMEOUT)
            assert asked == {"addr": 3, "id": 3}
            await wait_for_condition(lambda: server.is_connected("FETCHED-ID"))
            server.link_for(server.registry.key_for("FETCHED-ID")).session.abort()  # once more
            await wait_for_condition(lambda: asked == {"addr": 4, "id": 4} and client.state is OK)
        finally:
            await client.close(grace=1)
            await asyncio.wait_for(task, TIMEOUT)


# -- backoff ---------------------------------------------------------------------------


def test_exponential_backoff_defaults_and_growth(monkeypatch):
    backoff = ExponentialBackoff()
    assert (backoff.initial, backoff.multiplier, backoff.maximum, backoff.jitter) == (
        0.5,
        1.5,
        60.0,
        0.5,
    )
    assert backoff.max_attempts is None
    monkeypatch.setattr(client_module.random, "random", lambda: 0.5)  # no jitter
    expected = [min(0.5 * 1.5**i, 60.0) for i in range(20)]
    assert [backoff.next_delay() for _ in range(20)] == pytest.approx(expected)
    assert expected[-1] == 60.0 and expected[8] < 60.0
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.5)


def test_exponential_backoff_jitter_stays_within_half(monkeypatch):
    for value, factor in ((0.0, 0.5), (0.999999, 1.5)):
        monkeypatch.setattr(client_module.random, "random", lambda value=value: value)
        backoff = ExponentialBackoff(maximum=5.0)
        delays = [backoff.next_delay() for _ in range(10)]
        intervals = [min(0.5 * 1.5**i, 5.0) for i in range(10)]
        assert delays == pytest.approx([i * factor for i in intervals], rel=1e-5)
    monkeypatch.undo()
    samples = []
    for _ in range(200):
        backoff = ExponentialBackoff(maximum=5.0)
        delays = [backoff.next_delay() for _ in range(10)]
        for delay, interval in zip(delays, intervals, strict=True):
            assert 0.5 * interval <= delay <= 1.5 * interval
        samples.append(delays[0])
    assert max(samples) - min(samples) > 0.2  # the jitter is really applied


def test_exponential_backoff_max_attempts():
    backoff = ExponentialBackoff(max_attempts=2)
    assert backoff.next_delay() is not None
    assert backoff.next_delay() is not None
    assert backoff.next_delay() is None
    backoff.reset()
    assert backoff.next_delay() is not None
    assert ExponentialBackoff(max_attempts=0).next_delay() is None


# -- construction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"identifier": "ID"},
        {"server_addr": "127.0.0.1:1"},
        {"fetch_identifier": lambda: "ID"},
        {"fetch_server_addr": lambda: "127.0.0.1:1"},
        {"server_addr": "", "identifier": "ID"},
        {"server_addr": "127.0.0.1:1", "identifier": ""},
    ],
    ids=[
        "nothing",
        "no-server",
        "no-identifier",
        "fetch-id-only",
        "fetch-addr-only",
        "empty-server",
        "empty-identifier",
    ],
)
def test_constructor_errors(kwargs):
    with pytest.raises(ValueError):
        Client(**kwargs)


def test_constructor_accepts_fetchers_instead_of_values():
    Client(fetch_server_addr=lambda: "127.0.0.1:1", fetch_identifier=lambda: "ID")
    Client("127.0.0.1:1", fetch_identifier=lambda: "ID")
    Client(fetch_server_addr=lambda: "127.0.0.1:1", identifier="ID")


# -- closing at any moment -------------------------------------------------------------


async def test_close_while_waiting_to_redial_returns_promptly():
    changes: list[ClientStateChange] = []
    client = Client(
        dead_address(),
        "X",
        on_state_change=changes.append,
        backoff=ExponentialBackoff(initial=30, jitter=0),
    )
    task = asyncio.ensure_future(client.start())
    try:
        await wait_for_condition(lambda: pairs(changes)[-1:] == [(C, C)])
        await asyncio.sleep(0.05)  # now sleeping 30 s before the next attempt
        started = time.monotonic()
        await asyncio.wait_for(client.close(), 1)
        await asyncio.wait_for(task, 1)
        assert time.monotonic() - started < 1
        assert client.state is X
    finally:
        task.cancel()


async def test_close_after_the_server_went_away_returns_promptly():
    changes: list[ClientStateChange] = []
    tunnel = Tunnel(
        client_kwargs={
            "on_state_change": changes.append,
            "backoff": ExponentialBackoff(initial=30, jitter=0),
        }
    )
    async with tunnel:
        await tunnel.server.close(grace=0)
        await wait_for_condition(lambda: pairs(changes)[-1:] == [(D, C)])
        started = time.monotonic()
        await asyncio.wait_for(tunnel.client.close(), 1)
        await asyncio.wait_for(tunnel.client_task, 1)
        assert time.monotonic() - started < 1
        assert pairs(changes)[-1] == (C, X)


async def test_close_during_the_connect_exchange_stops_the_client():
    """The server accepted TCP but has not answered the CONNECT yet: close() ends start()
    at once, and the client does not connect afterwards."""
    accepted = asyncio.Event()
    finished = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        try:
            await reader.read()  # never answers; ends when the client hangs up
        except ConnectionError:
            pass
        finally:
            writer.close()
            finished.set()

    silent_server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = silent_server.sockets[0].getsockname()[1]
    client = Client(f"127.0.0.1:{port}", "X", **FAST)
    task = asyncio.ensure_future(client.start())
    try:
        await asyncio.wait_for(accepted.wait(), TIMEOUT)
        started = time.monotonic()
        await asyncio.wait_for(client.close(), 1)
        await asyncio.wait_for(task, 2)
        assert time.monotonic() - started < 2
        assert client.state is X
        await asyncio.wait_for(finished.wait(), TIMEOUT)  # the connection was dropped
    finally:
        task.cancel()
        silent_server.close()
        await silent_server.wait_closed()


async def test_close_while_fetching_the_identifier_never_connects():
    async with tunnel_server() as (server, port):
        server.add_host("slow.test", "SLOW-ID")
        release = asyncio.Event()
        fetching = asyncio.Event()

        async def identifier() -> str:
            fetching.set()
            await release.wait()
            return "SLOW-ID"

        changes: list[ClientStateChange] = []
        client = Client(
            f"127.0.0.1:{port}", fetch_identifier=identifier, on_state_change=changes.append, **FAST
        )
        task = asyncio.ensure_future(client.start())
        try:
            await asyncio.wait_for(fetching.wait(), TIMEOUT)
            await asyncio.wait_for(client.close(), 1)
            release.set()
            await asyncio.wait_for(task, 2)
            assert client.state is X
            assert OK not in [c.current for c in changes]
            await asyncio.sleep(0.1)
            assert not server.is_connected("SLOW-ID")
        finally:
            if not task.done():
                await client.close(grace=0)
                task.cancel()


# -- unknown protocol ------------------------------------------------------------------


class FakeStream:
    def __init__(self) -> None:
        self.closed = False
        self.written: list[bytes] = []

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return default


def test_unknown_transport_protocol_gets_a_closing_protocol(caplog):
    client = Client("127.0.0.1:1", "ID")
    protocol = client._stream_protocol(proto.ControlMessage(1, 9, 8080))
    stream = FakeStream()
    protocol.connection_made(stream)
    assert stream.closed
    assert stream.written == []
    assert "unknown transport protocol 9" in caplog.text
    known = client._stream_protocol(proto.ControlMessage(1, proto.TCP, 8080))
    assert type(known) is not type(protocol)


async def test_secret_identifier_never_logged(caplog):
    caplog.set_level("DEBUG")
    async with Tunnel() as tunnel:
        assert await get_echo(tunnel, "log") == "log"
        secret = tunnel.identifier
    assert secret not in caplog.text
    assert caplog.records  # something was logged at all


async def test_the_connect_line_says_where_traffic_goes(caplog):
    """On connect the client says where each kind of stream is sent, never the secret."""
    with caplog.at_level(logging.INFO, logger="ytun.client"):
        tunnel = Tunnel(client_kwargs={"tcp_local": {7000: "127.0.0.1:22"}})
        async with tunnel:
            pass
    lines = [r.getMessage() for r in caplog.records if "tunnel connected to" in r.getMessage()]
    assert lines, caplog.text
    assert f"HTTP and WebSocket -> {tunnel.origin}" in lines[0]
    assert "TCP 7000 -> 127.0.0.1:22" in lines[0]
    assert tunnel.identifier not in caplog.text
