"""One server as a node of several: its Redis ownership, its hop listener and dialer, and
the :class:`~ytun.tunnel.peers.Peers` port that joins them to the tunnel server.

Wiring (``ytun server --registry redis://… --cluster-listen ADDR``)::

    registry = RedisRegistry(url)                  # not started yet
    node = Node(registry, secret, listen_socket, advertise)
    await registry.start()                         # loads routes and every holder
    server = Server(registry=registry, peers=node.peers)
    await node.attach(server)                      # hops in, refreshes, readiness
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as ssl_module

from ..errors import SessionClosedError
from ..registry.redis import RedisRegistry
from ..tunnel.peers import ConnectionKind
from ..tunnel.server import Server
from .hop import HopAuth, HopDialer, HopListener, nobody_listens
from .redis_ownership import REFRESH, TTL, RedisOwnership

logger = logging.getLogger("ytun.cluster")

#: Seconds a stopping node waits for its release records to reach Redis.
RELEASE_WAIT = 1.0


class NodePeers:
    """The tunnel's Peers across nodes: hand-offs become hops."""

    def __init__(self, ownership: RedisOwnership, dialer: HopDialer) -> None:
        self.ownership = ownership
        self.dialer = dialer

    def hand_off(
        self, key: str, kind: ConnectionKind, transport: asyncio.BaseTransport, data: bytes
    ) -> bool:
        found = self.ownership.holder_address(key)
        if found is None or found[0] == self.ownership.node:
            return False
        return self.dialer.forward(found[1], kind, key, transport, data)

    async def claim(self, key: str) -> bool:
        return await self.ownership.claim(key)

    def release(self, key: str) -> None:
        self.ownership.release(key)


class Node:
    """This server's part in a cluster of servers sharing one Redis (see module doc).

    ``listen`` is a bound socket for the hop listener (it starts listening in
    :meth:`attach`); ``advertise`` is the ``host:port`` other nodes dial to reach it.
    ``listen_ssl`` serves the hop with TLS; ``dial_ssl`` dials the other nodes with TLS and
    checks their certificates (both or neither: every node of a cluster does the same)."""

    def __init__(
        self,
        registry: RedisRegistry,
        secret: bytes,
        listen: socket.socket,
        advertise: str,
        *,
        ttl: float = TTL,
        refresh: float = REFRESH,
        listen_ssl: ssl_module.SSLContext | None = None,
        dial_ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.registry = registry
        self.auth = HopAuth(secret)
        self.ownership = RedisOwnership(
            registry, advertise, ttl=ttl, refresh=refresh, gone=nobody_listens
        )
        self.dialer = HopDialer(self.auth, ssl=dial_ssl)
        self._listen_ssl = listen_ssl
        self.peers = NodePeers(self.ownership, self.dialer)
        self._socket = listen
        self._listener: asyncio.AbstractServer | None = None
        self.hops: HopListener | None = None

    async def attach(self, server: Server) -> None:
        """Serve hops for ``server``, keep this node's records alive, report readiness."""
        self.hops = HopListener(self.auth, server.adopt_hop)
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self.hops.protocol_factory, sock=self._socket, ssl=self._listen_ssl
        )

        def drop(key: str) -> None:  # another node holds it now: ours must go
            link = server.link_for(key)
            if link is not None:
                link.disconnect(SessionClosedError("another node holds this client"))

        self.ownership.on_lost = drop
        self.ownership.start()
        server.add_readiness_check(self.problem)

    def counters(self) -> dict[str, tuple[str, float]]:
        """This node's hops and takeovers, for the metrics (``TunnelMetrics.add_counters``)."""
        hops = self.hops
        return {
            "ytun_cluster_hops_sent": (
                "Public connections carried to the node holding their client.",
                self.dialer.sent,
            ),
            "ytun_cluster_hops_failed": (
                "Public connections whose holder could not be reached (answered 502).",
                self.dialer.failed,
            ),
            "ytun_cluster_hops_accepted": (
                "Connections other nodes carried here.",
                hops.accepted if hops is not None else 0,
            ),
            "ytun_cluster_hops_refused": (
                "Hops refused here: a wrong secret, a malformed, stale or replayed first line.",
                hops.refused if hops is not None else 0,
            ),
            "ytun_cluster_takeovers": (
                "Clients taken over from a node whose hop port refused connections.",
                self.ownership.taken_over,
            ),
        }

    def problem(self) -> str | None:
        if self._listener is None or not self._listener.is_serving():
            return "cluster listener not serving"
        return None

    async def close(self) -> None:
        """After the server closed (its clients' records are being released)."""
        if self._listener is not None:
            self._listener.close()
        self.dialer.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._released(), RELEASE_WAIT)
        self.ownership.close()
        await self.registry.aclose()

    async def _released(self) -> None:
        await asyncio.sleep(0)  # the releases of links that just ended are scheduled
        while self.ownership.held or self.ownership.busy:
            await asyncio.sleep(0.02)
