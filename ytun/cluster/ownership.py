"""Who holds which client: one process of the server at a time.

A client's session lives in the process that accepted its control connection; every other
process must know where, to hand it the public connections for that client.
:class:`Ownership` is that notion, behind three calls, so it can live in the supervising
parent's memory (:class:`OwnershipTable`, reached through :class:`ParentOwnership`, on one
machine) or in a shared store such as Redis (several machines).

Keys are opaque strings (the registry's client keys); they are never logged.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
from collections.abc import Callable, Iterator

from .channel import Channel, Message

#: Seconds a worker waits for the parent to grant a claim.
CLAIM_TIMEOUT = 5.0


class Ownership(abc.ABC):
    """This process's view of who holds which client."""

    #: This process's name among its peers.
    node: str

    @abc.abstractmethod
    async def claim(self, key: str) -> bool:
        """Hold ``key`` here: True if granted (nobody held it, or this node already did),
        False if another node holds it."""

    @abc.abstractmethod
    def release(self, key: str) -> None:
        """This node no longer holds ``key`` (a no-op if another one does)."""

    @abc.abstractmethod
    def holder(self, key: str) -> str | None:
        """The node holding ``key`` as last heard, without a round trip (it is asked
        for every public connection that lands on a node without the client)."""


class OwnershipTable:
    """The one-machine table, in the supervising parent: key -> node. No I/O."""

    def __init__(self) -> None:
        self._holders: dict[str, str] = {}

    def claim(self, key: str, node: str) -> str:
        """Grant ``key`` to ``node`` unless someone holds it; returns the holder."""
        return self._holders.setdefault(key, node)

    def release(self, key: str, node: str) -> bool:
        """True if ``node`` held ``key`` and now nobody does."""
        if self._holders.get(key) == node:
            del self._holders[key]
            return True
        return False

    def drop(self, node: str) -> list[str]:
        """Every key ``node`` held (it is gone): now held by nobody."""
        keys = [key for key, holder in self._holders.items() if holder == node]
        for key in keys:
            del self._holders[key]
        return keys

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._holders.items()))

    def __len__(self) -> int:
        return len(self._holders)


class ParentOwnership(Ownership):
    """A worker's side of the parent's :class:`OwnershipTable`: claims are asked over the
    worker's channel; the parent announces every change to every worker, so
    :meth:`holder` is a dictionary lookup."""

    def __init__(self, node: str, channel: Channel) -> None:
        self.node = node
        self._channel = channel
        self._holders: dict[str, str] = {}
        self._asked: dict[int, asyncio.Future[bool]] = {}
        self._numbers: Callable[[], int] = itertools.count().__next__

    async def claim(self, key: str) -> bool:
        if self._channel.closed:
            return False  # the parent is gone: this worker is stopping
        number = self._numbers()
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._asked[number] = answer
        self._channel.send({"t": "claim", "key": key, "n": number})
        try:
            return await asyncio.wait_for(answer, CLAIM_TIMEOUT)
        except asyncio.TimeoutError:
            return False  # the parent is stuck: the client is refused and tries again
        finally:
            self._asked.pop(number, None)

    def release(self, key: str) -> None:
        if self._holders.get(key) == self.node:
            del self._holders[key]
        if not self._channel.closed:
            self._channel.send({"t": "release", "key": key})

    def holder(self, key: str) -> str | None:
        return self._holders.get(key)

    def received(self, message: Message) -> bool:
        """Apply a message from the parent; False if it is not about ownership."""
        kind = message.get("t")
        if kind == "holder":
            key, node = message["key"], message["node"]
            if node is None:
                self._holders.pop(key, None)
            else:
                self._holders[key] = node
            return True
        if kind == "claimed":
            answer = self._asked.get(message["n"])
            if answer is not None and not answer.done():
                if message["ok"]:
                    self._holders[message["key"]] = self.node
                answer.set_result(bool(message["ok"]))
            return True
        return False

    def parent_gone(self) -> None:
        """No answer will come: pending claims are refused."""
        for answer in self._asked.values():
            if not answer.done():
                answer.set_result(False)
