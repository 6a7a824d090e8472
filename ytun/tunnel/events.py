"""State changes delivered two ways: to one listener callback, and to async iterators."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

Change = TypeVar("Change")


class StateFeed(Generic[Change]):
    """Publishes each change to ``listener`` (its errors are logged, never raised into the
    publisher) and to every iterator open at that moment. An iterator ends after a change
    for which ``is_last`` is true."""

    def __init__(
        self,
        listener: Callable[[Change], object] | None,
        logger: logging.Logger,
        is_last: Callable[[Change], bool] = lambda change: False,
    ) -> None:
        self._listener = listener
        self._logger = logger
        self._is_last = is_last
        self._queues: list[asyncio.Queue[Change]] = []

    def publish(self, change: Change) -> None:
        if self._listener is not None:
            try:
                self._listener(change)
            except Exception:
                self._logger.exception("state listener failed")
        for queue in self._queues:
            queue.put_nowait(change)

    def subscribe(self) -> AsyncIterator[Change]:
        """Every change from this call on (not from the first iteration: none is missed)."""
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._queues.append(queue)
        return self._iterate(queue)

    async def _iterate(self, queue: asyncio.Queue[Change]) -> AsyncIterator[Change]:
        try:
            while True:
                change = await queue.get()
                yield change
                if self._is_last(change):
                    return
        finally:
            self._queues.remove(queue)
