"""The server's port to the other processes of the same server (``ytun.cluster``).

A server alone has no peers (``Server(peers=None)``) and pays nothing for this. With
``--workers N`` each worker's server is given a :class:`Peers`: it says which clients
another process holds, hands it public connections for them (the socket itself, with
the bytes already read), and records which clients this process holds.
"""

from __future__ import annotations

import asyncio
from typing import Literal, Protocol

#: What a handed-off connection is to the process that adopts it.
ConnectionKind = Literal["http", "tcp"]


class Peers(Protocol):
    def hand_off(
        self, key: str, kind: ConnectionKind, transport: asyncio.BaseTransport, data: bytes
    ) -> bool:
        """Give the connection of ``transport`` (and ``data``, the bytes already read from
        it and not yet acted on) to the process holding client ``key``. True once it is
        on its way: the caller then drops its transport, which leaves the connection open
        (the other process holds it now). False when no other process holds ``key`` or
        it cannot be reached: the caller answers as it would alone."""
        ...

    async def claim(self, key: str) -> bool:
        """Record that this process holds client ``key``; False if another one does."""
        ...

    def release(self, key: str) -> None:
        """This process no longer holds client ``key``."""
        ...
