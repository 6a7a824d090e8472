"""A claim that finds another node's ownership record asks whether that node is still
there: a node whose hop port refuses connections is gone and its client is taken over at
once (compare-and-set); a node that answers keeps it. The old holder, should it come back,
sees on its next refresh that the record is not its own and drops the client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from redis_helpers import RedisServer, free_port, redis_server  # noqa: F401 - fixture
from test_registry_redis import eventually

from ytun.cluster import hop
from ytun.cluster.hop import HopAuth, HopListener, nobody_listens
from ytun.cluster.redis_ownership import RedisOwnership
from ytun.registry.redis import RedisRegistry

KEY = "cd" * 32


async def test_a_refused_port_is_gone_a_listening_one_is_not_and_the_probe_is_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert await nobody_listens(f"127.0.0.1:{free_port()}") is True
    hops = HopListener(HopAuth(b"k" * 32), lambda *args, **kwargs: None)
    server = await asyncio.get_running_loop().create_server(hops.protocol_factory, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        with caplog.at_level(logging.INFO, logger="ytun.cluster"):
            assert await nobody_listens(f"127.0.0.1:{port}") is False
            await asyncio.sleep(0.1)
        assert hops.refused == 0 and not caplog.records
    finally:
        server.close()
    assert await nobody_listens("no port here") is False


async def test_a_host_that_does_not_answer_in_time_is_not_called_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(3600)

    monkeypatch.setattr(hop.asyncio, "open_connection", never)
    assert await nobody_listens("127.0.0.1:9", timeout=0.05) is False


class Member:
    """A registry and its ownership, as a node has them, with a stand-in probe."""

    def __init__(self, url: str, name: str, gone: bool) -> None:
        self.registry = RedisRegistry(url, node=name)
        self.lost: list[str] = []
        self.probed: list[str] = []
        self.ownership = RedisOwnership(
            self.registry,
            f"127.0.0.1:{free_port()}",
            refresh=0.2,
            on_lost=self.lost.append,
            gone=self._probe,
        )
        self.answer = gone

    async def _probe(self, address: str) -> bool:
        self.probed.append(address)
        return self.answer

    async def start(self) -> Member:
        await self.registry.start()
        self.ownership.start()
        return self

    async def stop(self) -> None:
        self.ownership.close()
        await self.registry.aclose()


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[Member, Member]]:  # noqa: F811
    a = await Member(redis_server.url, "a", gone=False).start()
    b = await Member(redis_server.url, "b", gone=False).start()
    yield a, b
    await b.stop()
    await a.stop()


async def test_a_holder_that_answers_keeps_its_client(pair: tuple[Member, Member]) -> None:
    a, b = pair
    assert await a.ownership.claim(KEY)
    assert not await b.ownership.claim(KEY)
    assert b.probed == [a.ownership.address]
    assert b.ownership.holder(KEY) == "a" and b.ownership.taken_over == 0
    assert KEY in a.ownership.held


async def test_a_gone_holder_is_replaced_at_once_and_drops_the_client_if_it_returns(
    pair: tuple[Member, Member], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    assert await a.ownership.claim(KEY)
    b.answer = True  # a's hop port refuses connections: its process is gone
    with caplog.at_level(logging.INFO, logger="ytun.cluster"):
        assert await b.ownership.claim(KEY)
    assert b.ownership.taken_over == 1 and KEY in b.ownership.held
    assert "took a client over from node a: nothing listens at its hop address" in caplog.text
    stored = await b.registry.client.get(b.registry.prefix + "owner:" + KEY)
    assert stored.decode() == f"b {b.ownership.address}"
    # a was only slow after all: its next refresh finds b's record and lets the client go.
    await eventually(lambda: a.lost == [KEY])
    assert KEY not in a.ownership.held
    await eventually(lambda: a.ownership.holder(KEY) == "b")
