"""Several nodes in one process, sharing a real redis-server: a request landing on a node
without the client crosses one hop to the holder (HTTP, a body, TCP), the hop carries the
public client's address, a wrong cluster secret is refused, two nodes that each believe
the other holds a client answer 502 instead of passing a request back and forth, a
duplicate identifier on another node follows the one-process rule, and a stopping node
gives its clients up at once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable

import pytest
import trustme
from aiohttp import web
from redis_helpers import RedisServer, redis_server  # noqa: F401 - fixture
from tunnel_helpers import origin_app, raw_request

from ytun import Client, Server
from ytun.cluster.hop import HopAuth
from ytun.cluster.node import Node
from ytun.registry.redis import RedisRegistry
from ytun.tunnel.client import ExponentialBackoff

SECRET = b"s" * 32
WAIT = 15.0


async def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class RunningNode:
    def __init__(
        self,
        name: str,
        url: str,
        secret: bytes = SECRET,
        listen_ssl: ssl.SSLContext | None = None,
        dial_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.secret = secret
        self.listen_ssl = listen_ssl
        self.dial_ssl = dial_ssl

    async def start(self) -> RunningNode:
        self.registry = RedisRegistry(self.url, node=self.name)
        hop_socket = socket.create_server(("127.0.0.1", 0))
        self.hop_port = hop_socket.getsockname()[1]
        self.node = Node(
            self.registry,
            self.secret,
            hop_socket,
            f"127.0.0.1:{self.hop_port}",
            refresh=0.5,
            listen_ssl=self.listen_ssl,
            dial_ssl=self.dial_ssl,
        )
        await self.registry.start()
        self.server = Server(registry=self.registry, peers=self.node.peers, access_log=None)
        listener = await self.server.serve("127.0.0.1", 0)
        self.port = listener.sockets[0].getsockname()[1]
        await self.node.attach(self.server)
        return self

    async def stop(self) -> None:
        await self.server.close(grace=0.5)
        await self.node.close()


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    runner = web.AppRunner(origin_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[list[RunningNode]]:  # noqa: F811
    started = [await RunningNode(name, redis_server.url).start() for name in ("a", "b", "c")]
    yield started
    for node in started:
        await node.stop()


async def connect(node: RunningNode, identifier: str, origin: str) -> tuple[Client, asyncio.Task]:
    client = Client(
        f"127.0.0.1:{node.port}",
        identifier,
        local_addr=origin,
        backoff=ExponentialBackoff(initial=0.05, maximum=0.3),
    )
    task = asyncio.ensure_future(client.start())
    await client.wait_connected(timeout=10)
    return client, task


@contextlib.asynccontextmanager
async def connected(node: RunningNode, identifier: str, origin: str) -> AsyncIterator[Client]:
    """A client connected to ``node`` for the block, closed after it."""
    client, task = await connect(node, identifier, origin)
    try:
        yield client
    finally:
        await client.close(grace=1)
        await asyncio.wait_for(task, 10)


def get(port: int, host: str, path: str = "/", body: bytes = b"") -> bytes:
    method = b"POST" if body else b"GET"
    return (
        method
        + b" "
        + path.encode()
        + b" HTTP/1.1\r\nHost: "
        + host.encode()
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


async def test_requests_on_any_node_reach_the_client_held_by_one(
    nodes: list[RunningNode], origin: str
) -> None:
    a, b, c = nodes
    a.server.add_host("app.test", "secret-1")
    await a.server.flush()
    await eventually(lambda: c.registry.lookup_host("app.test") is not None)
    async with connected(a, "secret-1", origin):
        key = a.registry.key_for("secret-1")
        await eventually(lambda: b.node.ownership.holder(key) == "a")
        await eventually(lambda: c.node.ownership.holder(key) == "a")
        for node in (a, b, c):
            request = get(node.port, "app.test", f"/?echo={node.name}")
            answer = await raw_request(node.port, request)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert answer.endswith(b"\r\n\r\n" + node.name.encode())
        # A body, through the hop, as it was sent.
        body = bytes(range(256)) * 64
        answer = await raw_request(c.port, get(c.port, "app.test", "/upload", body))
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.endswith(hashlib.sha256(body).hexdigest().encode())
        # Two requests on one keep-alive connection, both through the hop.
        two = get(b.port, "app.test", "/?echo=one").replace(b"Connection: close\r\n", b"")
        answer = await raw_request(b.port, two + get(b.port, "app.test", "/?echo=two"))
        assert answer.count(b"HTTP/1.1 200") == 2 and answer.endswith(b"two")
        # One hop per public connection: two from B, two from C, none from the holder.
        assert (a.node.dialer.sent, b.node.dialer.sent, c.node.dialer.sent) == (0, 2, 2)
        assert a.node.hops is not None
        assert a.node.hops.accepted == 4 and a.node.hops.refused == 0


async def test_the_holder_sees_the_public_clients_address_not_the_forwarding_node(
    nodes: list[RunningNode], origin: str
) -> None:
    a, b, _ = nodes
    a.server.add_host("app.test", "secret-1")
    await a.server.flush()
    async with connected(a, "secret-1", origin):
        key = a.registry.key_for("secret-1")
        await eventually(lambda: b.node.ownership.holder(key) == "a")
        request = get(b.port, "app.test").replace(
            b"\r\n\r\n", b"\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n", 1
        )
        answer = await raw_request(b.port, request)
        assert answer.startswith(b"HTTP/1.1 200")
        # The forged field was replaced by the public client's address (this test's).
        assert b"\r\nX-Seen-Forwarded-For: 127.0.0.1\r\n" in answer
        assert b"\r\nX-Seen-Forwarded-Host: app.test\r\n" in answer


async def test_a_tcp_connection_on_another_node_crosses_the_hop(
    nodes: list[RunningNode], origin: str
) -> None:
    a, b, _ = nodes
    echo_server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    route = socket.create_server(("127.0.0.1", 0))  # B's public TCP port
    route_port = route.getsockname()[1]
    client = Client(
        f"127.0.0.1:{a.port}",
        "secret-tcp",
        tcp_local={route_port: f"127.0.0.1:{echo_port}"},
        backoff=ExponentialBackoff(initial=0.05, maximum=0.3),
    )
    try:
        await b.server.add_addr(route, "secret-tcp")
        await b.server.flush()
        await eventually(lambda: a.registry.lookup_addr("127.0.0.1", route_port) is not None)
        task = asyncio.ensure_future(client.start())
        await client.wait_connected(timeout=10)
        key = a.registry.key_for("secret-tcp")
        await eventually(lambda: b.node.ownership.holder(key) == "a")
        reader, writer = await asyncio.open_connection("127.0.0.1", route_port)
        writer.write(b"ping through two nodes")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"ping through two nodes"
        writer.close()
        await client.close(grace=1)
        await asyncio.wait_for(task, 10)
    finally:
        echo_server.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read())
    await writer.drain()
    writer.close()


async def test_a_hop_with_a_wrong_secret_is_refused_and_served_nothing(
    nodes: list[RunningNode], origin: str
) -> None:
    a, _, _ = nodes
    a.server.add_host("app.test", "secret-1")
    async with connected(a, "secret-1", origin):
        key = a.registry.key_for("secret-1")
        forged = HopAuth(b"w" * 32).line("http", key, 0, "1.2.3.4", b"http")
        garbage = [forged, b"YTUN-HOP/1 http " + key.encode() + b" 0 - http 0 0 00\r\n", b"x" * 600]
        for line in garbage:
            answer = await raw_request(a.hop_port, line + get(0, "app.test"))
            assert answer == b""
        assert a.node.hops is not None and a.node.hops.refused == 3
        assert a.node.hops.accepted == 0
        # Another node whose secret differs cannot carry requests either.
        stranger = await RunningNode("x", a.url, secret=b"z" * 32).start()
        try:
            await eventually(lambda: stranger.node.ownership.holder(key) == "a")
            answer = await raw_request(stranger.port, get(stranger.port, "app.test"))
            assert answer.startswith(b"HTTP/1.1 502")
            assert answer.endswith(b"no client session established\n")
            assert a.node.hops.refused == 4 and stranger.node.dialer.failed == 1
        finally:
            await stranger.stop()


async def test_a_hop_line_is_good_once_a_replay_is_refused(
    nodes: list[RunningNode], origin: str
) -> None:
    a, _, _ = nodes
    a.server.add_host("app.test", "secret-1")
    async with connected(a, "secret-1", origin):
        line = HopAuth(SECRET).line("http", a.registry.key_for("secret-1"), 0, "1.2.3.4", b"http")
        first = await raw_request(a.hop_port, line + get(0, "app.test", "/?echo=once"))
        assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"once")
        assert b"X-Seen-Forwarded-For: 1.2.3.4" in first
        replayed = await raw_request(a.hop_port, line + get(0, "app.test", "/?echo=again"))
        assert replayed == b""
        assert a.node.hops is not None and (a.node.hops.accepted, a.node.hops.refused) == (1, 1)


async def test_two_nodes_that_each_believe_the_other_holds_a_client_answer_502(
    nodes: list[RunningNode],
) -> None:
    a, b, _ = nodes
    a.server.add_host("ghost.test", "secret-ghost")
    await a.server.flush()
    await eventually(lambda: b.registry.lookup_host("ghost.test") is not None)
    key = a.registry.key_for("secret-ghost")
    client = a.registry.client
    # Each announcement is ignored by the node it names: A hears that B holds the client,
    # B hears that A does. Nobody does.
    for node in (a, b):
        message = {"n": node.name, "a": f"127.0.0.1:{node.hop_port}", "h": [key], "ttl": 10}
        await client.publish("ytun:owners", json.dumps(message))
    await eventually(lambda: a.node.ownership.holder(key) == "b")
    await eventually(lambda: b.node.ownership.holder(key) == "a")
    for node in (a, b):
        answer = await asyncio.wait_for(raw_request(node.port, get(node.port, "ghost.test")), 10)
        assert answer.startswith(b"HTTP/1.1 502"), answer
        assert answer.endswith(b"no client session established\n")
    assert a.node.hops is not None and b.node.hops is not None
    assert a.node.hops.accepted + b.node.hops.accepted == 2  # one hop each, never more


async def test_a_duplicate_identifier_on_another_node_is_refused_while_the_first_lives(
    nodes: list[RunningNode], origin: str
) -> None:
    a, b, _ = nodes
    a.server.add_host("app.test", "secret-1")
    await a.server.flush()
    first, first_task = await connect(a, "secret-1", origin)
    key = a.registry.key_for("secret-1")
    await eventually(lambda: b.node.ownership.holder(key) == "a")
    second = Client(
        f"127.0.0.1:{b.port}",
        "secret-1",
        local_addr=origin,
        backoff=ExponentialBackoff(initial=0.05, maximum=0.3),
    )
    second_task = asyncio.ensure_future(second.start())
    try:
        with pytest.raises(asyncio.TimeoutError):
            await second.wait_connected(timeout=1.5)
        assert a.server.is_connected("secret-1") and not b.server.is_connected("secret-1")
        answer = await raw_request(b.port, get(b.port, "app.test"))
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        await second.close(grace=0)
        await asyncio.wait_for(second_task, 10)
        await first.close(grace=1)
        await asyncio.wait_for(first_task, 10)


async def test_a_stopping_node_gives_its_clients_up_at_once(
    redis_server: RedisServer,  # noqa: F811
    origin: str,
) -> None:
    a = await RunningNode("a", redis_server.url).start()
    b = await RunningNode("b", redis_server.url).start()
    try:
        a.server.add_host("app.test", "secret-1")
        await a.server.flush()
        client, task = await connect(a, "secret-1", origin)
        key = a.registry.key_for("secret-1")
        await eventually(lambda: b.node.ownership.holder(key) == "a")
        await client.close(grace=1)
        await asyncio.wait_for(task, 10)
        await eventually(lambda: b.node.ownership.holder(key) is None, timeout=5)
        assert await b.registry.client.get(f"ytun:owner:{key}") is None
    finally:
        await a.stop()
        await b.stop()


async def test_redis_down_the_holder_keeps_serving_and_says_it_is_not_ready(
    redis_server: RedisServer,  # noqa: F811
    origin: str,
) -> None:
    a = await RunningNode("a", redis_server.url).start()
    b = await RunningNode("b", redis_server.url).start()
    try:
        assert a.server.ready() and a.server.readiness() == []
        a.server.add_host("app.test", "secret-1")
        await a.server.flush()
        client, task = await connect(a, "secret-1", origin)
        key = a.registry.key_for("secret-1")
        await eventually(lambda: b.node.ownership.holder(key) == "a")
        redis_server.stop()
        await eventually(lambda: not a.server.ready() and not b.server.ready())
        assert any("Redis unreachable" in reason for reason in a.server.readiness())
        answer = await raw_request(a.port, get(a.port, "app.test", "/?echo=held"))
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"held")
        redis_server.start()  # empty: the nodes give it their routes and records back
        await eventually(lambda: a.server.ready() and b.server.ready(), timeout=20)
        await eventually(lambda: b.node.ownership.holder(key) == "a")
        answer = await raw_request(b.port, get(b.port, "app.test", "/?echo=again"))
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"again")
        assert await a.registry.client.hget("ytun:hosts", "app.test") == key.encode()
        await client.close(grace=1)
        await asyncio.wait_for(task, 10)
    finally:
        await a.stop()
        await b.stop()


async def test_a_later_request_on_a_hopped_connection_for_another_holder_is_answered_502(
    nodes: list[RunningNode], origin: str
) -> None:
    """The documented keep-alive rule: the hop carries the whole public connection, and the
    holder answers what it cannot serve instead of forwarding a second time."""
    a, b, c = nodes
    a.server.add_host("app.test", "secret-1")
    a.server.add_host("other.test", "secret-2")
    await a.server.flush()
    await eventually(lambda: c.registry.lookup_host("other.test") is not None)
    first, first_task = await connect(a, "secret-1", origin)
    second, second_task = await connect(c, "secret-2", origin)
    try:
        key1, key2 = a.registry.key_for("secret-1"), a.registry.key_for("secret-2")
        await eventually(lambda: b.node.ownership.holder(key1) == "a")
        await eventually(lambda: a.node.ownership.holder(key2) == "c")
        keep = get(b.port, "app.test", "/?echo=one").replace(b"Connection: close\r\n", b"")
        answer = await raw_request(b.port, keep + get(b.port, "other.test", "/?echo=two"))
        assert answer.startswith(b"HTTP/1.1 200") and b"\r\n\r\none" in answer
        assert answer.count(b"HTTP/1.1 502") == 1
        assert answer.endswith(b"no client session established\n")
        assert c.node.hops is not None and c.node.hops.accepted == 0
        assert a.node.dialer.sent == 0  # the holder never forwarded it again
        # On its own connection, the same request crosses one hop to C.
        answer = await raw_request(b.port, get(b.port, "other.test", "/?echo=three"))
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"three")
    finally:
        for client, task in ((first, first_task), (second, second_task)):
            await client.close(grace=1)
            await asyncio.wait_for(task, 10)


async def test_the_hop_over_tls_checks_the_holders_certificate(
    redis_server: RedisServer,  # noqa: F811
    origin: str,
) -> None:
    authority = trustme.CA()
    served = authority.issue_cert("127.0.0.1").configure_cert
    listen_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served(listen_ssl)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    stranger_trust = ssl.create_default_context()
    trustme.CA().configure_trust(stranger_trust)  # another authority: A's cert is not trusted
    url = redis_server.url
    a = await RunningNode("a", url, listen_ssl=listen_ssl, dial_ssl=trusting).start()
    b = await RunningNode("b", url, listen_ssl=listen_ssl, dial_ssl=trusting).start()
    x = await RunningNode("x", url, listen_ssl=listen_ssl, dial_ssl=stranger_trust).start()
    try:
        a.server.add_host("app.test", "secret-1")
        await a.server.flush()
        client, task = await connect(a, "secret-1", origin)
        key = a.registry.key_for("secret-1")
        await eventually(lambda: b.node.ownership.holder(key) == "a")
        await eventually(lambda: x.node.ownership.holder(key) == "a")
        answer = await raw_request(b.port, get(b.port, "app.test", "/?echo=sealed"))
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"sealed")
        answer = await raw_request(x.port, get(x.port, "app.test"))
        assert answer.startswith(b"HTTP/1.1 502")
        assert x.node.dialer.failed == 1
        assert a.node.hops is not None and a.node.hops.accepted == 1
        await client.close(grace=1)
        await asyncio.wait_for(task, 10)
    finally:
        for node in (a, b, x):
            await node.stop()
