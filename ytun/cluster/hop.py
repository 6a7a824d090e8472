"""The hop between nodes: a public connection that landed on a node without its client is
carried to the node holding the client over one TCP connection, then spliced both ways.

The forwarding node opens a connection to the holder's cluster listener and sends one
line, then the bytes it had already read from the public connection, as they were::

    YTUN-HOP/1 <kind> <key> <port> <peer> <scheme> <time> <nonce> <mac>\\r\\n

``kind`` is ``http`` or ``tcp``; ``key`` the client key; ``port`` the public TCP port
(``tcp``); ``peer`` the public client's address and ``scheme`` ``http``/``https`` of the
listener that accepted it (for the forwarding headers the holder adds); ``mac`` the hex
HMAC-SHA256, under the cluster secret, of everything before it. The holder checks the MAC
in constant time and that ``time`` is within :data:`MAX_SKEW` seconds, and answers
nothing to a wrong one (it closes the connection and logs the address, never the line).
The secret never crosses the wire. Each line is good once: the holder remembers the
nonces of the lines it took for as long as their time could still pass (twice the skew),
so a line seen on the wire and sent again is refused like a forged one (up to
:data:`MAX_REMEMBERED` nonces; past that the oldest are forgotten early, and the log says
so). Plain TCP still shows the traffic to anyone on the path: on a network others can
watch, give the hop TLS (``HopListener(ssl=…)`` serves it, ``HopDialer(ssl=…)`` dials it
and checks the holder's certificate against the host of its advertised address).

The holder serves the connection as a public one that never moves on: a request for a
client it does not hold is answered there (502), so a request crosses one hop at most and
two nodes that each believe the other holds a client cannot pass it back and forth.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..tunnel.addr import split_host_port
from ..tunnel.http1 import error_response
from ..tunnel.peers import ConnectionKind
from ..tunnel.splice import AnswerAndClose, Pipe, PipeEnd

logger = logging.getLogger("ytun.cluster")

MAGIC = b"YTUN-HOP/1"
#: The first line's longest form; a longer one is refused.
MAX_LINE = 512
#: Seconds a hop's first line may take to arrive.
LINE_TIMEOUT = 5.0
#: Connections to the cluster listener waiting for their first line at once; more are
#: closed at once (they hold descriptors, and no public connection is counted for them yet).
MAX_WAITING = 1024
#: Seconds between the forwarding node's clock and the holder's, at most.
MAX_SKEW = 60
#: Seconds to connect to the holder.
CONNECT_TIMEOUT = 3.0
#: Seconds to wait for a holder's listener when asking whether the holder is gone.
PROBE_TIMEOUT = 1.0
#: Hops open at once from one node; more public connections are answered where they land.
MAX_HOPS = 10_000
#: The smallest cluster secret accepted, in bytes.
MIN_SECRET = 16
#: Seconds a taken line's nonce is remembered: its time is within MAX_SKEW of the holder's
#: clock when it is taken, so it cannot pass the check again after twice that.
REMEMBER_FOR = 2 * MAX_SKEW
#: Nonces remembered at most (about 150 bytes each): 1,600 hops a second, sustained.
MAX_REMEMBERED = 200_000

_KEY = re.compile(rb"[0-9a-f]{64}")
_PEER = re.compile(rb"[0-9A-Za-z.:%_-]{1,64}")


@dataclass(frozen=True)
class HopRequest:
    """What a checked first line says."""

    kind: ConnectionKind
    key: str
    port: int
    peer: str
    scheme: bytes


class HopAuth:
    """Signs and checks first lines with the cluster secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET:
            raise ValueError(f"the cluster secret must be at least {MIN_SECRET} bytes")
        self._secret = secret
        self._taken: set[bytes] = set()  # the nonces of the lines taken...
        self._order: deque[tuple[float, bytes]] = deque()  # ...with when each may go, in order
        self._warned_full = False

    def line(self, kind: ConnectionKind, key: str, port: int, peer: str, scheme: bytes) -> bytes:
        peer_bytes = peer.encode() if _PEER.fullmatch(peer.encode()) else b"-"
        fields = b" ".join(
            [
                MAGIC,
                kind.encode(),
                key.encode(),
                str(port).encode(),
                peer_bytes,
                scheme,
                str(int(time.time())).encode(),
                secrets.token_hex(8).encode(),
            ]
        )
        return fields + b" " + self._mac(fields) + b"\r\n"

    def check(self, line: bytes) -> HopRequest | None:
        """The request of a well-formed, signed, fresh line (without its CRLF) that was
        not taken before, else None."""
        signed, _, mac = line.rpartition(b" ")
        if not hmac.compare_digest(self._mac(signed), mac):
            return None
        parts = signed.split(b" ")
        if len(parts) != 8 or parts[0] != MAGIC:
            return None
        _, kind, key, port, peer, scheme, stamp, nonce = parts
        if (
            kind not in (b"http", b"tcp")
            or not _KEY.fullmatch(key)
            or scheme
            not in (
                b"http",
                b"https",
            )
        ):
            return None
        if not (port.isdigit() and stamp.isdigit() and _PEER.fullmatch(peer)):
            return None
        if abs(time.time() - int(stamp)) > MAX_SKEW:
            return None
        if not self._take(nonce):
            return None
        return HopRequest(
            "http" if kind == b"http" else "tcp", key.decode(), int(port), peer.decode(), scheme
        )

    @property
    def remembered(self) -> int:
        """How many taken lines' nonces are kept to refuse their replays."""
        return len(self._order)

    def _take(self, nonce: bytes) -> bool:
        """Remember ``nonce``; False if it was taken before (a replayed line)."""
        now = time.monotonic()
        order, taken = self._order, self._taken
        while order and (order[0][0] <= now or len(order) >= MAX_REMEMBERED):
            if order[0][0] > now and not self._warned_full:
                self._warned_full = True
                logger.warning(
                    "more than %d cluster hops in %d s: the oldest are forgotten early, so "
                    "their lines could be replayed until their time runs out",
                    MAX_REMEMBERED,
                    REMEMBER_FOR,
                )
            taken.discard(order.popleft()[1])
        if nonce in taken:
            return False
        taken.add(nonce)
        order.append((now + REMEMBER_FOR, nonce))
        return True

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest().encode()


async def nobody_listens(address: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True when the hop listener at ``address`` refuses connections: the node is gone.
    False when it accepts one (closed again at once, before any line, which the listener
    takes silently) or cannot be told within ``timeout`` (a slow or unreachable node)."""
    host, port = split_host_port(address)
    if not port:
        return False
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        return True
    except (OSError, asyncio.TimeoutError):
        return False
    writer.transport.abort()
    return False


#: How the holder serves a checked hop: Server.adopt_hop.
Adopt = Callable[..., None]


class HopListener:
    """The holder's side: ``protocol_factory`` for the ``--cluster-listen`` server."""

    def __init__(self, auth: HopAuth, adopt: Adopt) -> None:
        self._auth = auth
        self._adopt = adopt
        self.accepted = 0
        self.refused = 0
        self.waiting = 0  # connections whose first line has not come yet

    def protocol_factory(self) -> asyncio.Protocol:
        return _HopIn(self)

    def refuse(self, transport: asyncio.Transport, why: str) -> None:
        self.refused += 1
        peer = transport.get_extra_info("peername")
        if self.refused == 1 or self.refused % 100 == 0:  # a flood is not a log flood
            logger.warning(
                "refused a cluster hop from %s: %s (%d refused)",
                peer[0] if isinstance(peer, tuple) else "-",
                why,
                self.refused,
            )
        transport.abort()


class _HopIn(asyncio.Protocol):
    """Reads the first line of an incoming hop, then hands the connection to the server."""

    def __init__(self, listener: HopListener) -> None:
        self._listener = listener
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        if listener.waiting >= MAX_WAITING:
            why = f"{MAX_WAITING} hops wait for their first line already"
            listener.refuse(transport, why)  # type: ignore[arg-type]
            return
        listener.waiting += 1
        self._transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(LINE_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        transport = self._transport
        if transport is not None:
            self._stop()
            self._listener.refuse(transport, "no first line in time")

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self._buffer += data
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                self._stop()
                self._listener.refuse(transport, "first line too long")
            return
        line, rest = self._buffer[:end], self._buffer[end + 1 :]
        self._stop()
        request = self._listener._auth.check(line.rstrip(b"\r"))
        if request is None:
            self._listener.refuse(transport, "wrong cluster secret or malformed first line")
            return
        self._listener.accepted += 1
        try:
            self._listener._adopt(
                transport,
                request.kind,
                rest,
                key=request.key,
                port=request.port,
                peer=request.peer,
                scheme=request.scheme,
            )
        except Exception:  # never a traceback in the loop: the connection ends
            logger.exception("could not serve a cluster hop")
            transport.abort()

    def _stop(self) -> None:
        self._transport = None
        if self._timer is not None:  # set while waiting for the first line, and only then
            self._timer.cancel()
            self._timer = None
            self._listener.waiting -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()


class HopDialer:
    """The forwarding side: carries public connections to the nodes holding their clients."""

    def __init__(
        self,
        auth: HopAuth,
        *,
        max_hops: int = MAX_HOPS,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self._auth = auth
        self.max_hops = max_hops
        #: TLS towards the holders, checking their certificates (None: plain TCP).
        self.ssl = ssl
        self.open = 0  # hops carrying a connection now
        self.sent = 0
        self.failed = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def forward(
        self,
        address: str,
        kind: ConnectionKind,
        key: str,
        transport: asyncio.BaseTransport,
        data: bytes,
    ) -> bool:
        """Take over ``transport`` (its protocol is replaced at once) and carry it, ``data``
        first, to the node at ``address``. False, with ``transport`` untouched, when too
        many hops are open. A holder that cannot be reached gets the public client a 502
        (``tcp``: the connection closed)."""
        if self.open >= self.max_hops:
            return False
        public: asyncio.Transport = transport  # type: ignore[assignment]
        peer = public.get_extra_info("peername")
        port = public.get_extra_info("sockname")[1] if kind == "tcp" else 0
        scheme = b"https" if public.get_extra_info("sslcontext") is not None else b"http"
        first = self._auth.line(
            kind, key, port, peer[0] if isinstance(peer, tuple) else "-", scheme
        )
        pipe = Pipe()
        public.pause_reading()
        public.set_protocol(pipe.sides[0])
        pipe.sides[0].connection_made(public)  # reading waits for the hop
        self.open += 1
        task = asyncio.get_running_loop().create_task(
            self._dial(address, kind, first + data, pipe, public)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _dial(
        self,
        address: str,
        kind: ConnectionKind,
        first: bytes,
        pipe: Pipe,
        public: asyncio.Transport,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            host, port = split_host_port(address)
            hop_end = _HopOut(pipe, first, self, public if kind == "http" else None)
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: hop_end,
                    host,
                    port,
                    ssl=self.ssl,
                    server_hostname=host if self.ssl is not None else None,
                ),
                CONNECT_TIMEOUT,
            )
            self.sent += 1
        except (OSError, asyncio.TimeoutError, ValueError) as exc:  # ssl.SSLError included
            self.open -= 1
            self.failed += 1
            logger.warning("cannot reach node %s for a forwarded connection: %s", address, exc)
            if public.is_closing():
                return
            if kind == "tcp":
                public.abort()
                return
            answer = AnswerAndClose(
                error_response(502, "no client session established", close=True)
            )
            public.set_protocol(answer)
            try:
                answer.connection_made(public)
                public.resume_reading()
            except OSError:  # the public client is gone meanwhile (the stock loop's ENOTCONN)
                public.abort()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


class _HopOut(PipeEnd):
    """The hop connection's end of the pipe: the first line and early bytes go first.

    A hop carrying HTTP that ends before the holder sent a byte (it refused the hop: a
    wrong secret, or it is stopping) gets the public client a 502 rather than a bare close.
    """

    def __init__(
        self, pipe: Pipe, first: bytes, dialer: HopDialer, http: asyncio.Transport | None
    ) -> None:
        super().__init__(pipe, 1)
        self._first = first
        self._dialer = dialer
        self._silent_public = http  # until the holder answers something

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self._first)  # type: ignore[attr-defined]
        self._first = b""
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._silent_public = None
        super().data_received(data)

    def eof_received(self) -> bool:
        if self._answer_refused():
            return False
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._dialer.open -= 1
        if self._answer_refused():
            exc = None  # the public side closes after the answer, not at once
        super().connection_lost(exc)

    def _answer_refused(self) -> bool:
        public, self._silent_public = self._silent_public, None
        if public is None or public.is_closing():
            return False
        self._dialer.failed += 1
        public.write(error_response(502, "no client session established", close=True))
        return True
