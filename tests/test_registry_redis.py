"""RedisRegistry against a real redis-server: one salt for every node, reads from memory
kept current by announcements, ordered writes that flush() waits for, add_host(replace=False)
decided by Redis when two nodes race, and recovery when Redis goes away, hangs or loses its data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis_helpers import RedisServer, free_port, redis_server  # noqa: F401 - fixture

from ytun import HostTakenError
from ytun.errors import RegistryError
from ytun.registry.redis import PING_ANSWER_WITHIN, QUIET_BEFORE_PING, RedisRegistry

WAIT = 10.0


async def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[list[RedisRegistry]]:  # noqa: F811
    made: list[RedisRegistry] = []
    for name in ("a", "b"):
        made.append(await RedisRegistry.open(redis_server.url, node=name))
    yield made
    for registry in made:
        await registry.aclose()


async def test_nodes_share_one_salt_so_one_identifier_is_one_key(
    nodes: list[RedisRegistry],
) -> None:
    a, b = nodes
    assert a.salt == b.salt and len(a.salt) == 32
    assert a.key_for("secret") == b.key_for("secret")


async def test_a_change_on_one_node_reaches_the_other_without_a_lookup(
    nodes: list[RedisRegistry],
) -> None:
    a, b = nodes
    a.add_host("App.Test:8000", "secret")
    a.add_addr(2222, "secret")
    a.add_addr(0, "secret", ip="127.0.0.2")
    assert a.lookup_host("app.test:8000") == a.key_for("secret")  # at once, locally
    await a.flush()
    await eventually(lambda: b.lookup_host("app.test:8000") is not None)
    key = b.key_for("secret")
    assert b.lookup_host("APP.test:8000") == key
    await eventually(lambda: b.lookup_addr("127.0.0.2", 1) == key)
    assert b.lookup_addr("127.0.0.9", 2222) == key
    assert b.owner("secret") == key and b.owner("other") is None
    assert b.label(key) == "app.test:8000"
    a.delete_host("app.test:8000")
    await a.flush()
    await eventually(lambda: b.lookup_host("app.test:8000") is None)
    assert b.label(key) in ("tcp:2222", "tcp:127.0.0.2")


async def test_a_node_started_later_loads_every_route(
    redis_server: RedisServer,  # noqa: F811
    nodes: list[RedisRegistry],
) -> None:
    a, _ = nodes
    a.add_host("one.test", "s1")
    a.add_host("two.test", "s2")
    a.add_addr(7000, "s3")
    await a.flush()
    c = await RedisRegistry.open(redis_server.url, node="c")
    try:
        assert {route.name for route in c.hosts()} == {"one.test", "two.test"}
        assert [route.name for route in c.tcp_routes()] == [":7000"]
        assert c.lookup_host("two.test") == c.key_for("s2")
    finally:
        await c.aclose()


async def test_two_nodes_taking_one_host_at_once_end_with_one_owner(
    nodes: list[RedisRegistry],
) -> None:
    a, b = nodes
    # Neither has heard of the other's write yet: both accept locally.
    a.add_host("race.test", "from-a", replace=False)
    b.add_host("race.test", "from-b", replace=False)
    outcomes = await asyncio.gather(a.flush(), b.flush(), return_exceptions=True)
    lost = [o for o in outcomes if isinstance(o, HostTakenError)]
    assert len(lost) == 1, outcomes
    assert "race.test" in str(lost[0]) and "from-" not in str(lost[0])
    await eventually(lambda: a.host_key("race.test") == b.host_key("race.test"))
    winner = a.host_key("race.test")
    assert winner in (a.key_for("from-a"), a.key_for("from-b"))
    with pytest.raises(HostTakenError):
        (b if winner == a.key_for("from-a") else a).add_host("race.test", "x", replace=False)


async def test_a_client_left_without_routes_by_another_node_is_reported(
    nodes: list[RedisRegistry],
) -> None:
    a, b = nodes
    gone: list[str] = []
    b.watch(gone.append)
    a.add_host("only.test", "secret")
    await a.flush()
    await eventually(lambda: b.has_key(b.key_for("secret")))
    a.delete_host("only.test")
    await a.flush()
    await eventually(lambda: gone == [b.key_for("secret")])


async def test_redis_down_reads_go_on_writes_wait_and_reach_redis_when_it_is_back(
    redis_server: RedisServer,  # noqa: F811
    nodes: list[RedisRegistry],
) -> None:
    a, b = nodes
    a.add_host("kept.test", "secret")
    await a.flush()
    await eventually(lambda: b.lookup_host("kept.test") is not None)
    redis_server.stop()
    await eventually(lambda: a.problem() is not None and b.problem() is not None)
    assert "Redis unreachable" in (a.problem() or "")
    assert a.lookup_host("kept.test") == a.key_for("secret")  # from memory
    assert b.lookup_host("kept.test") == b.key_for("secret")
    a.add_host("later.test", "secret")
    with pytest.raises(RegistryError, match="not stored yet"):
        await a.flush(timeout=0.3)
    redis_server.start()  # empty: no persistence
    await eventually(lambda: a.problem() is None and b.problem() is None, timeout=20)
    await a.flush()
    await eventually(lambda: b.lookup_host("later.test") is not None)
    # Redis had lost everything: the nodes gave their routes back.
    c = await RedisRegistry.open(redis_server.url, node="c")
    try:
        assert {r.name for r in c.hosts()} == {"kept.test", "later.test"}
        assert c.salt == a.salt
    finally:
        await c.aclose()


async def test_a_hung_redis_is_noticed_by_its_silence_and_the_node_recovers(
    redis_server: RedisServer,  # noqa: F811
    nodes: list[RedisRegistry],
) -> None:
    a, b = nodes
    a.add_host("kept.test", "secret")
    await a.flush()
    redis_server.pause()  # connections stay open: only the unanswered PING can tell
    try:
        hung = QUIET_BEFORE_PING + PING_ANSWER_WITHIN + 3
        await eventually(lambda: a.problem() is not None and b.problem() is not None, hung)
        assert "no answer to a PING" in (a.problem() or "")
        assert b.lookup_host("kept.test") == b.key_for("secret")  # still served from memory
    finally:
        redis_server.resume()
    await eventually(lambda: a.problem() is None and b.problem() is None, timeout=20)
    a.add_host("after.test", "secret")
    await a.flush()
    await eventually(lambda: b.lookup_host("after.test") is not None)


async def test_writes_refused_by_redis_make_the_node_not_ready_until_they_are_stored(
    redis_server: RedisServer,  # noqa: F811
    nodes: list[RedisRegistry],
) -> None:
    a, b = nodes
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await admin.config_set("maxmemory", "1")  # every write now fails with OOM
        a.add_host("full.test", "secret")
        with pytest.raises(RegistryError, match="not stored yet"):
            await a.flush(timeout=1)
        assert "Redis refuses writes: OutOfMemoryError" in (a.problem() or "")
        assert b.problem() is None  # b wrote nothing: its subscription is fine
        await admin.config_set("maxmemory", "0")
        await a.flush(timeout=WAIT)  # the resync sent it, no restart of Redis needed
        await eventually(lambda: a.problem() is None)
        await eventually(lambda: b.lookup_host("full.test") is not None)
    finally:
        await admin.config_set("maxmemory", "0")
        await admin.aclose()


async def test_too_many_writes_while_redis_is_down_are_refused(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    registry = await RedisRegistry.open(redis_server.url, max_pending=3)
    try:
        redis_server.stop()
        await eventually(lambda: registry.problem() is not None)
        for n in range(3):
            registry.add_host(f"h{n}.test", "secret")
        with pytest.raises(RegistryError, match="waiting for Redis"):
            registry.add_host("h3.test", "secret")
        assert registry.host_key("h3.test") is None  # refused before memory changed
    finally:
        await registry.aclose()


async def test_malformed_announcements_are_ignored(nodes: list[RedisRegistry]) -> None:
    a, b = nodes
    for junk in (b"not json", b"{}", b'{"n":"x","t":"host","f":"x.test","k":"not-a-key"}'):
        await a.client.publish(a.channel, junk)
    a.add_host("after.test", "secret")
    await a.flush()
    await eventually(lambda: b.lookup_host("after.test") is not None)
    assert b.lookup_host("x.test") is None


async def test_unreachable_or_bad_urls_are_a_registry_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(RegistryError) as caught:
        await RedisRegistry.open(f"redis://:hunter2@127.0.0.1:{port}/0", connect_timeout=1)
    assert "hunter2" not in str(caught.value) and str(port) in str(caught.value)
    with pytest.raises(RegistryError):
        RedisRegistry("http://127.0.0.1:1/")
