"""The last N exchanges, and the live feed of changes to them.

Memory is bounded: at most ``max_entries`` exchanges, each with at most ``body_limit``
bytes of each body and one head each way (heads are bounded by the splitter's head limit).
A subscriber that falls more than :data:`FEED_BACKLOG` events behind is dropped (its stream
ends; the page reconnects and reloads the list) rather than buffered without end.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

from .exchange import Exchange, summary

DEFAULT_MAX_ENTRIES = 100
DEFAULT_BODY_LIMIT = 64 * 1024
FEED_BACKLOG = 256
#: Subscribers at once (open pages); one more is refused.
MAX_SUBSCRIBERS = 32


class _Subscriber:
    __slots__ = ("events", "wake", "dropped")

    def __init__(self) -> None:
        self.events: deque[str] = deque()
        self.wake = asyncio.Event()
        self.dropped = False


class ExchangeLog:
    """Exchanges by id, oldest first; the oldest is forgotten past ``max_entries``."""

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, body_limit: int = DEFAULT_BODY_LIMIT
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if body_limit < 0:
            raise ValueError("body_limit must not be negative")
        self.max_entries = max_entries
        self.body_limit = body_limit
        self._entries: OrderedDict[int, Exchange] = OrderedDict()
        self._next_id = 1
        self._subscribers: set[_Subscriber] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, exchange: Exchange) -> None:
        exchange.id = self._next_id
        self._next_id += 1
        self._entries[exchange.id] = exchange
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        self._publish("added", exchange)

    def changed(self, exchange: Exchange) -> None:
        if self._entries.get(exchange.id) is exchange:
            self._publish("changed", exchange)

    def get(self, exchange_id: int) -> Exchange | None:
        return self._entries.get(exchange_id)

    def newest_first(self) -> list[Exchange]:
        return list(reversed(self._entries.values()))

    def clear(self) -> None:
        self._entries.clear()
        self._send(json.dumps({"event": "cleared"}))

    # -- the live feed -------------------------------------------------------------------

    def _publish(self, kind: str, exchange: Exchange) -> None:
        if self._subscribers:
            self._send(json.dumps({"event": kind, "exchange": summary(exchange)}))

    def _send(self, text: str) -> None:
        for subscriber in list(self._subscribers):
            if len(subscriber.events) >= FEED_BACKLOG:
                subscriber.dropped = True
                self._subscribers.discard(subscriber)
            else:
                subscriber.events.append(text)
            subscriber.wake.set()

    def can_subscribe(self) -> bool:
        return not self._closed and len(self._subscribers) < MAX_SUBSCRIBERS

    async def feed(self) -> AsyncIterator[str]:
        """Each change from now on, as a JSON text, until :meth:`close` (or the subscriber
        falls too far behind)."""
        subscriber = _Subscriber()
        if self._closed:
            return
        self._subscribers.add(subscriber)
        try:
            yield json.dumps({"event": "hello", "count": len(self._entries)})
            while True:
                while subscriber.events:
                    yield subscriber.events.popleft()
                if subscriber.dropped or self._closed:
                    return
                subscriber.wake.clear()
                await subscriber.wake.wait()
        finally:
            self._subscribers.discard(subscriber)

    def close(self) -> None:
        """End every feed."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.wake.set()

    def stats(self) -> dict[str, Any]:
        return {
            "count": len(self._entries),
            "max_entries": self.max_entries,
            "body_limit": self.body_limit,
        }
