"""Who holds which client across machines: ownership records in Redis with a TTL.

A node holding client ``key`` keeps ``{prefix}owner:<key>`` = ``"<node> <hop address>"``
with a TTL (:data:`TTL`, 10 s) that it refreshes every :data:`REFRESH` seconds, so a node
that dies stops owning its clients within the TTL and they can connect elsewhere. Claims
are ``SET NX``: one node at a time. Every claim, release and refresh is also announced on
``{prefix}owners`` (JSON ``{"n": node, "a": address, "h": [held keys], "r": [released],
"ttl": seconds}``), so :meth:`RedisOwnership.holder` answers from memory: an announced
holding is believed until its TTL runs out without a refresh.

A claim that finds another node's record asks whether that node is still there (the
``gone`` probe: :func:`~ytun.cluster.hop.nobody_listens` on its hop address, given by
:class:`~ytun.cluster.node.Node`). When nothing listens there any more (its process died:
the port refuses connections) the record is replaced at once, compare-and-set, instead of
after its TTL; a node that answers, or cannot be told from a slow one, keeps its record.

While Redis is away, claims are refused (a client cannot be placed safely: it may be
connected to another node), clients already held keep working, and when Redis is back the
node reloads every holder and writes its own records again (Redis may have lost them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..registry.redis import RedisError, RedisRegistry
from .ownership import Ownership

logger = logging.getLogger("ytun.cluster")

TTL = 10.0
REFRESH = 3.0
#: Keys per refresh script and per announcement.
BATCH = 500

_KEY = re.compile(r"[0-9a-f]{64}")

# KEYS: owner records; ARGV: our value, TTL in ms. Keeps ours alive, writes back ours that
# are gone (Redis restarted), and returns the positions of those another node has now.
_REFRESH = """
local lost = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
  elseif not v then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
"""

# KEYS: one owner record; ARGV: our value, the release announcement.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
end
return 1
"""


# KEYS: one owner record; ARGV: the value found there, ours, TTL in ms. Takes the record
# only if it still holds the value the probe was about.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

#: Whether the node at a hop address is gone: True only when that is certain.
GoneProbe = Callable[[str], Awaitable[bool]]


class RedisOwnership(Ownership):
    """This node's claims in Redis and its memory of every node's (see the module doc).

    ``address`` is where other nodes reach this node's hop listener. Create it before the
    registry starts (it listens on the registry's subscription), then ``start()``.
    ``on_lost(key)`` is called for a client this node held that another node took while
    Redis was away (both had claimed it)."""

    def __init__(
        self,
        registry: RedisRegistry,
        address: str,
        *,
        ttl: float = TTL,
        refresh: float = REFRESH,
        on_lost: Callable[[str], None] | None = None,
        gone: GoneProbe | None = None,
    ) -> None:
        self.node = registry.node
        self.address = address
        self._registry = registry
        self._client: Any = registry.client
        self._prefix = registry.prefix + "owner:"
        self._channel = registry.prefix + "owners"
        self._value = f"{self.node} {address}"
        self._ttl = ttl
        self._refresh_every = refresh
        self.on_lost = on_lost
        self.gone = gone
        self.taken_over = 0
        self.held: set[str] = set()
        # key -> (node, hop address, believed until: time.monotonic())
        self._holders: dict[str, tuple[str, str, float]] = {}
        self._refresh: Any = self._client.register_script(_REFRESH)
        self._release: Any = self._client.register_script(_RELEASE)
        self._take_over: Any = self._client.register_script(_TAKE_OVER)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keeper: asyncio.Task[None] | None = None
        registry.listen(self._channel, self._announced)
        registry.on_resync(self._resync)

    def start(self) -> None:
        self._keeper = asyncio.get_running_loop().create_task(self._keep_alive())

    @property
    def busy(self) -> bool:
        """Claims, releases or announcements are still on their way to Redis."""
        return bool(self._tasks)

    def close(self) -> None:
        """Stop refreshing; the records run out within the TTL (or are released first)."""
        if self._keeper is not None:
            self._keeper.cancel()
        for task in self._tasks:
            task.cancel()

    # -- the Ownership interface ---------------------------------------------------------

    async def claim(self, key: str) -> bool:
        if not self._registry.connected:
            return key in self.held  # cannot check Redis: only what we already hold
        record = self._prefix + key
        try:
            granted = await self._client.set(record, self._value, nx=True, px=self._ms)
            if not granted:
                current = _text(await self._client.get(record))
                if current == self._value:
                    await self._client.pexpire(record, self._ms)
                    granted = True
                elif current:
                    granted = await self._take_from_gone_node(record, current)
                    if not granted:
                        self._believe(key, current, self._ttl)
                        return False
                else:  # it ran out between the two calls: try once more
                    granted = await self._client.set(record, self._value, nx=True, px=self._ms)
        except (RedisError, OSError) as exc:
            logger.warning("cannot claim a client in Redis: %s", type(exc).__name__)
            return False
        if not granted:
            return False
        self.held.add(key)
        self._holders.pop(key, None)
        self._announce(held=[key])
        return True

    async def _take_from_gone_node(self, record: str, current: str) -> bool:
        parsed = _parse(current)
        if self.gone is None or parsed is None or parsed[0] == self.node:
            return False
        if not await self.gone(parsed[1]):
            return False
        taken = await self._take_over(keys=[record], args=[current, self._value, self._ms])
        if taken:
            self.taken_over += 1
            logger.info(
                "took a client over from node %s: nothing listens at its hop address %s",
                parsed[0],
                parsed[1],
            )
        return bool(taken)

    def release(self, key: str) -> None:
        if key not in self.held:
            return
        self.held.discard(key)
        message = json.dumps({"n": self.node, "r": [key]})
        self._spawn(self._release_record(key, message))

    def holder(self, key: str) -> str | None:
        found = self.holder_address(key)
        return found[0] if found is not None else None

    def holder_address(self, key: str) -> tuple[str, str] | None:
        """``(node, hop address)`` of the node holding ``key``, as last heard."""
        if key in self.held:
            return self.node, self.address
        found = self._holders.get(key)
        if found is None:
            return None
        if found[2] < time.monotonic():  # no refresh heard within the TTL: it is gone
            del self._holders[key]
            return None
        return found[0], found[1]

    # -- keeping records and memory current ----------------------------------------------

    @property
    def _ms(self) -> int:
        return int(self._ttl * 1000)

    async def _release_record(self, key: str, message: str) -> None:
        with contextlib.suppress(RedisError, OSError):  # it runs out by itself anyway
            await self._release(
                keys=[self._prefix + key, self._channel], args=[self._value, message]
            )

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_every)
            if self._registry.connected and self.held:
                try:
                    await self._refresh_held()
                except (RedisError, OSError):  # the registry reconnects
                    pass
                except Exception:  # a bug must not stop the refreshes: records would run out
                    logger.exception("could not refresh the records of the clients held here")

    async def _refresh_held(self) -> None:
        keys = list(self.held)
        for start in range(0, len(keys), BATCH):
            batch = keys[start : start + BATCH]
            lost = await self._refresh(
                keys=[self._prefix + key for key in batch], args=[self._value, self._ms]
            )
            for position in lost or ():
                self._lost(batch[int(position) - 1])
        self._announce(held=[key for key in keys if key in self.held])

    def _lost(self, key: str) -> None:
        if key not in self.held:
            return
        self.held.discard(key)
        logger.warning("another node holds a client this node held too; dropping it here")
        if self.on_lost is not None:
            self.on_lost(key)

    async def _resync(self) -> None:
        """After a (re)connection: every node's records, then ours written back."""
        holders: dict[str, tuple[str, str, float]] = {}
        now = time.monotonic()
        async for record in self._client.scan_iter(match=self._prefix + "*", count=BATCH):
            name = _text(record)
            key = name[len(self._prefix) :]
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(name)
                pipe.pttl(name)
                value, left = await pipe.execute()
            parsed = _parse(_text(value))
            if parsed is not None and _KEY.fullmatch(key) and parsed[0] != self.node:
                holders[key] = (parsed[0], parsed[1], now + max(int(left), 0) / 1000)
        self._holders = holders
        if self.held:
            await self._refresh_held()

    def _announce(self, held: list[str]) -> None:
        for start in range(0, len(held), BATCH):
            message = json.dumps(
                {
                    "n": self.node,
                    "a": self.address,
                    "h": held[start : start + BATCH],
                    "ttl": self._ttl,
                }
            )
            self._spawn(self._publish(message))

    async def _publish(self, message: str) -> None:
        with contextlib.suppress(RedisError, OSError):  # the next refresh says it again
            await self._client.publish(self._channel, message)

    def _announced(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            node = message["n"]
            held, released = message.get("h", []), message.get("r", [])
            address = message.get("a", "")
            ttl = float(message.get("ttl", self._ttl))
            if not isinstance(node, str) or not isinstance(address, str):
                raise ValueError
            if not (isinstance(held, list) and isinstance(released, list)):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed ownership announcement")
            return
        if node == self.node:
            return
        until = time.monotonic() + min(max(ttl, 0.0), self._ttl * 3)
        for key in held:
            if isinstance(key, str) and _KEY.fullmatch(key):
                self._holders[key] = (node, address, until)
                if key in self.held:  # it took a client we believed ours
                    self._lost(key)
        for key in released:
            if isinstance(key, str) and self._holders.get(key, ("",))[0] == node:
                del self._holders[key]

    def _believe(self, key: str, value: str, ttl: float) -> None:
        parsed = _parse(value)
        if parsed is not None and parsed[0] != self.node:
            self._holders[key] = (parsed[0], parsed[1], time.monotonic() + ttl)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _parse(value: str) -> tuple[str, str] | None:
    node, _, address = value.partition(" ")
    return (node, address) if node and address else None


def _text(value: object) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
