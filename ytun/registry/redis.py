"""A registry shared by several server nodes: Redis (the ``redis`` package's asyncio client).

Reads never touch the network: they answer from the memory tables of
:class:`~ytun.registry.memory.MemoryRegistry`, loaded from Redis at start and kept current
by the changes every node announces on a pub/sub channel. Writes change memory at once and
go to Redis in order from one writer task; ``await flush()`` waits until they are stored.

Redis layout (``prefix`` is ``ytun:`` by default):

- ``{prefix}salt``: the hex salt of client keys, set once with SETNX by the first node, so
  every node derives the same key from an identifier;
- ``{prefix}hosts``: hash, host → client key;
- ``{prefix}tcp``: hash, ``port:N`` or ``ip:ADDR`` → client key;
- ``{prefix}changes``: the channel announcing each change as JSON
  ``{"n": node, "t": "host" | "tcp", "f": field, "k": key or null}``.

Each write is one Lua script that changes the hash and publishes the announcement, so no
node can miss a change it did not reload. ``add_host(replace=False)`` is checked in the same
script: when two nodes take one host at once, Redis keeps the first, the other node's
memory is set back to the winner and its next ``flush()`` raises ``HostTakenError``.

When Redis goes away the node keeps answering from memory (its clients keep working),
queues its writes (at most ``max_pending``; more raise ``RegistryError``) and reconnects
with a backoff. A Redis that stops answering without closing the connection (hung, or
its machine gone from the network) is noticed too: after ``QUIET_BEFORE_PING`` seconds of
silence the subscription sends a PING, and no answer within ``PING_ANSWER_WITHIN`` counts
as lost. A write that Redis refuses (an error answer) makes the node resync the same way.
On reconnection it subscribes again, sends what it queued and reloads every
route. A Redis that lost its data (restarted without persistence: the salt is gone) is
filled again from the node's memory (SETNX semantics, so nodes doing it at once agree).
:meth:`problem` says why the registry cannot be used, for readiness probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import HostTakenError, RegistryError
from .memory import SALT_SIZE, MemoryRegistry

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError, ResponseError
except ImportError:  # pragma: no cover - the optional extra is missing
    aioredis = None  # type: ignore[assignment]
    RedisError = ResponseError = OSError  # type: ignore[assignment,misc]

logger = logging.getLogger("ytun.registry")

_KEY = re.compile(r"[0-9a-f]{64}")
#: A write queued while Redis is away: (kind, field, key or None, replace).
_Change = tuple[str, str, "str | None", bool]
#: Seconds between reconnection attempts: from the first to the last.
RETRY_FIRST = 0.2
RETRY_MAX = 3.0
#: Seconds of silence on the subscription before asking Redis whether it is still there,
#: and for its answer: a hung Redis is noticed within their sum (plus a second).
QUIET_BEFORE_PING = 2.0
PING_ANSWER_WITHIN = 3.0

# KEYS: hash, channel. ARGV: field, key ('' deletes), replace ('1'/'0'), announcement.
# Returns the key that kept the field when replace is '0' and another key has it.
_WRITE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  if current then
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('PUBLISH', KEYS[2], ARGV[4])
  end
  return false
end
if current and current ~= ARGV[2] and ARGV[3] == '0' then
  return current
end
if current ~= ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PUBLISH', KEYS[2], ARGV[4])
end
return false
"""

# KEYS: salt, hosts hash, tcp hash. ARGV: salt, number of host pairs, then host/key pairs,
# then tcp field/key pairs. Sets the salt if there is none and, in the same step, puts this
# node's routes back (HSETNX), so no node can find the salt without the routes. 1 if set.
_SEED = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  return 0
end
local hosts = tonumber(ARGV[2])
local i = 3
while i < #ARGV do
  if (i - 3) / 2 < hosts then
    redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
  else
    redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
return 1
"""

Resynced = Callable[[], Awaitable[None]]
Handler = Callable[[bytes], None]


class RedisRegistry(MemoryRegistry):
    """Routes in Redis at ``url`` (``redis://host:6379/0``), cached in memory.

    Create it with ``await RedisRegistry.open(url)`` (or construct, then ``await
    start()``): that loads the routes and raises :class:`~ytun.errors.RegistryError` if
    Redis cannot be reached. ``node`` names this process in announcements."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ytun:",
        node: str | None = None,
        max_pending: int = 10_000,
        connect_timeout: float = 2.0,
    ) -> None:
        if aioredis is None:
            raise RegistryError(
                "--registry redis:// needs the redis package: pip install 'ytun[redis]'"
            )
        super().__init__(salt=b"\0")  # replaced by the shared salt in start()
        self.url = url
        self.prefix = prefix
        self.node = node or uuid.uuid4().hex[:12]
        self.max_pending = max_pending
        try:
            self.client: Any = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout,
                socket_timeout=connect_timeout + 3,
                socket_keepalive=True,
            )
        except ValueError as exc:
            raise RegistryError(f"registry {_safe_url(url)}: {exc}") from None
        self._hash = {"host": prefix + "hosts", "tcp": prefix + "tcp"}
        self.channel = prefix + "changes"
        self._pending: deque[_Change] = deque()
        self._wake = asyncio.Event()  # a change was queued
        self._idle = asyncio.Event()  # nothing queued or being sent
        self._idle.set()
        self._up = asyncio.Event()  # connected and in sync
        self._problem: str | None = "not started"
        self._conflicts: list[HostTakenError] = []
        self._channels: dict[str, Handler] = {self.channel: self._announced}
        self._resynced: list[Resynced] = []
        self._watchers: list[Callable[[str], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._script: Any = self.client.register_script(_WRITE)
        self._seed: Any = self.client.register_script(_SEED)
        self._replace = True  # the replace flag of the add_host being stored
        self._closed = False

    @classmethod
    async def open(cls, url: str, **options: Any) -> RedisRegistry:
        registry = cls(url, **options)
        await registry.start()
        return registry

    # -- hooks for the other parts of a node ----------------------------------------------

    def listen(self, channel: str, handler: Handler) -> None:
        """Deliver messages of ``channel`` (full name) to ``handler`` (before start())."""
        self._channels[channel] = handler

    def on_resync(self, callback: Resynced) -> None:
        """Await ``callback`` after every (re)connection, once the routes are reloaded."""
        self._resynced.append(callback)

    def watch(self, callback: Callable[[str], None]) -> None:
        self._watchers.append(callback)

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs."""
        return _safe_url(self.url)

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def problem(self) -> str | None:
        return self._problem

    # -- lifetime ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, take the shared salt, load every route, then keep in sync."""
        try:
            pubsub = await self._sync()
        except (RedisError, OSError) as exc:
            await self._close_client()
            raise RegistryError(f"registry {_safe_url(self.url)}: {_reason(exc)}") from None
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._keep_in_sync(pubsub)),
            loop.create_task(self._write_changes()),
        ]

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every change is in Redis. Raises ``HostTakenError`` if another node
        took a host first, ``RegistryError`` if Redis stays away for ``timeout`` s."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            raise RegistryError(
                f"registry {_safe_url(self.url)}: {len(self._pending)} changes not stored "
                f"yet ({self._problem or 'Redis is slow'})"
            ) from None
        if self._conflicts:
            conflict = self._conflicts.pop(0)
            self._conflicts.clear()
            raise conflict

    def close(self) -> None:
        """Stop syncing (queued writes that did not reach Redis are dropped)."""
        if self._closed:
            return
        self._closed = True
        self._problem = "closed"
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(RuntimeError):  # no loop running: nothing to close there
            asyncio.get_running_loop().create_task(self._close_client())

    async def aclose(self) -> None:
        """close(), then wait for the connections to end."""
        self.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close_client()

    async def _close_client(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()

    # -- writes --------------------------------------------------------------------------

    def add_host(self, host: str, identifier: str, *, replace: bool = True) -> str:
        self._replace = replace
        try:
            return super().add_host(host, identifier, replace=replace)
        finally:
            self._replace = True

    def _store_host(self, host: str, key: str | None) -> None:
        self._queue(("host", host, key, self._replace))

    def _store_addr(self, port: int, ip: str | None, key: str | None) -> None:
        self._queue(("tcp", f"ip:{ip}" if ip is not None else f"port:{port}", key, True))

    def _queue(self, change: _Change) -> None:
        if self._closed:
            raise RegistryError("the registry is closed")
        if len(self._pending) >= self.max_pending:
            raise RegistryError(
                f"registry {_safe_url(self.url)}: {len(self._pending)} changes waiting for "
                "Redis already; try again when it is back"
            )
        self._pending.append(change)
        self._idle.clear()
        self._wake.set()

    async def _write_changes(self) -> None:
        """The one writer: queued changes go to Redis in order, each until it is stored."""
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._up.wait()
            change = self._pending[0]
            try:
                await self._send(change)
            except (RedisError, OSError) as exc:
                self._lost(exc)
                continue  # kept at the head: sent again once the connection is back
            except Exception:  # a bug, not Redis: sending it again would fail again
                logger.exception("registry: a route change could not be stored; dropped")
            if self._pending and self._pending[0] is change:
                self._pending.popleft()

    async def _send(self, change: _Change) -> None:
        kind, field, key, replace = change
        message = json.dumps({"n": self.node, "t": kind, "f": field, "k": key})
        kept = await self._script(
            keys=[self._hash[kind], self.channel],
            args=[field, key or "", "1" if replace else "0", message],
        )
        if kept is not None:  # another node took the host first: it keeps it
            winner = kept.decode() if isinstance(kept, bytes) else str(kept)
            if _KEY.fullmatch(winner):
                self._apply(kind, field, winner)
            self._conflicts.append(HostTakenError(f"host {field} belongs to another client"))

    # -- staying in sync -----------------------------------------------------------------

    async def _sync(self) -> Any:
        """Subscribe, agree on the salt, send queued changes, reload: a fresh start or a
        reconnection. Returns the subscription."""
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(*self._channels)
            fresh = secrets.token_hex(SALT_SIZE) if self.salt == b"\0" else self.salt.hex()
            created = await self._seed_salt(fresh)
            stored = await self.client.get(self.prefix + "salt")
            salt = _salt(stored)
            if self.salt == b"\0":
                self.salt = salt
            elif salt != self.salt:
                self._problem = "the salt in Redis changed: client keys no longer match"
                logger.error("registry %s: the salt of client keys changed", _safe_url(self.url))
            if created and (self._hosts or self._ports or self._ips):
                logger.warning(
                    "registry %s had lost its routes; stored this node's %d hosts and %d TCP "
                    "routes",
                    _safe_url(self.url),
                    len(self._hosts),
                    len(self._ports) + len(self._ips),
                )
            while self._pending:  # what was queued while Redis was away, in order
                await self._send(self._pending[0])
                self._pending.popleft()
            await self._reload()
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        for callback in self._resynced:
            await callback()
        if self._problem is None or not self._problem.startswith("the salt"):
            self._problem = None
        self._up.set()
        if not self._pending:
            self._idle.set()
        return pubsub

    async def _seed_salt(self, salt: str) -> bool:
        """Set the salt if Redis has none, with this node's routes (empty at start): a
        Redis that lost its data gets them back in the same step."""
        pairs: list[str] = []
        for host, key in self._hosts.items():
            pairs += [host, key]
        hosts = len(pairs) // 2
        for port, key in self._ports.items():
            pairs += [f"port:{port}", key]
        for ip, key in self._ips.items():
            pairs += [f"ip:{ip}", key]
        keys = [self.prefix + "salt", self._hash["host"], self._hash["tcp"]]
        return bool(await self._seed(keys=keys, args=[salt, hosts, *pairs]))

    async def _reload(self) -> None:
        hosts = await self.client.hgetall(self._hash["host"])
        tcp = await self.client.hgetall(self._hash["tcp"])
        before = set(self._host_routes) | set(self._tcp_routes)
        for table in (self._hosts, self._ports, self._ips, self._host_routes, self._tcp_routes):
            table.clear()
        for field, key in hosts.items():
            self._apply("host", field.decode(), key.decode())
        for field, key in tcp.items():
            self._apply("tcp", field.decode(), key.decode())
        for kind, field, key, _ in self._pending:  # made while reloading: still on their way
            self._apply(kind, field, key)
        for key in before:  # clients whose routes went while this node was not listening
            if not self.has_key(key):
                self._tell_watchers(key)

    async def _keep_in_sync(self, pubsub: Any) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._sync()
                    logger.warning("registry %s is back; routes reloaded", _safe_url(self.url))
                    delay = RETRY_FIRST
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                self._lost(exc)
            except Exception as exc:  # a bug here must not end the sync for good
                logger.exception("registry sync failed; reconnecting")
                self._lost(exc)
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                pubsub = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _listen(self, pubsub: Any) -> None:
        """Hand each announcement to its channel's handler until the connection fails
        (raises ``ConnectionError`` if Redis stops answering) or a write failed (returns:
        only a resync brings the registry back)."""
        clock = asyncio.get_running_loop().time
        heard = clock()
        pinged: float | None = None
        while self._up.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            now = clock()
            if message is not None:
                heard, pinged = now, None
                if message.get("type") == "message":
                    handler = self._channels.get(_text(message.get("channel")))
                    if handler is not None:
                        handler(message.get("data") or b"")
            elif pinged is not None:
                if now - pinged > PING_ANSWER_WITHIN:
                    raise ConnectionError(f"no answer to a PING in {PING_ANSWER_WITHIN:g} s")
            elif now - heard > QUIET_BEFORE_PING:
                await pubsub.ping()
                pinged = now

    def _lost(self, exc: BaseException) -> None:
        state = "refuses writes" if isinstance(exc, ResponseError) else "unreachable"
        if self._up.is_set():
            logger.warning(
                "not ready: registry %s %s (%s); serving the clients held here "
                "from memory, changes wait",
                _safe_url(self.url),
                state,
                _reason(exc),
            )
        self._up.clear()
        self._problem = f"Redis {state}: {_reason(exc)}"

    def _announced(self, data: bytes) -> None:
        """A change another node made (our own were applied when made)."""
        try:
            change = json.loads(data)
            node, kind, field, key = change["n"], change["t"], change["f"], change["k"]
            if kind not in self._hash or not isinstance(field, str):
                raise ValueError(kind)
            if key is not None and not (isinstance(key, str) and _KEY.fullmatch(key)):
                raise ValueError("key")
        except (ValueError, KeyError, TypeError):
            logger.warning("registry: ignored a malformed change announcement")
            return
        if node == self.node:
            return
        self._apply(kind, field, key)

    def _apply(self, kind: str, field: str, key: str | None) -> None:
        """Make memory hold ``field → key`` (None: no such route)."""
        try:
            if kind == "host":
                before = self._hosts.get(field)
                if key is None:
                    if before is not None:
                        self._drop_host(field)
                elif before != key:
                    self._set_host(field, key)
            else:
                port, ip = _tcp_field(field)
                before = self._ips.get(ip) if ip is not None else self._ports.get(port)
                if key is None:
                    if before is not None:
                        self._drop_addr(port, ip)
                elif before != key:
                    self._set_addr(port, ip, key)
        except ValueError:
            logger.warning("registry: ignored a route with a malformed name")
            return
        if before is not None and before != key and not self.has_key(before):
            self._tell_watchers(before)

    def _tell_watchers(self, key: str) -> None:
        for callback in self._watchers:
            try:
                callback(key)
            except Exception:  # a watcher's bug must not stop the sync
                logger.exception("registry watcher failed")


def _tcp_field(field: str) -> tuple[int, str | None]:
    kind, _, value = field.partition(":")
    if kind == "port" and value.isdigit():
        return int(value), None
    if kind == "ip" and value:
        return 0, value
    raise ValueError(field)


def _salt(stored: object) -> bytes:
    text = stored.decode() if isinstance(stored, bytes) else str(stored)
    try:
        salt = bytes.fromhex(text)
    except ValueError:
        salt = b""
    if len(salt) != SALT_SIZE:
        raise RegistryError("the salt stored in Redis is not a ytun salt")
    return salt


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _safe_url(url: str) -> str:
    """The URL without a password (``redis://:secret@host`` → ``redis://***@host``)."""
    return re.sub(r"//[^@/]*@", "//***@", url)
