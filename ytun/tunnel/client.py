"""The tunnel client: dials the server, upgrades with CONNECT, runs the yamux client role,
and joins every stream the server asks for to a local service."""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import ipaddress
import logging
import random
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import (
    IdentifierRefusedError,
    RedialAbortedError,
    SessionClosedError,
    StreamLimitError,
    TunnelError,
    TunnelLoopError,
    YtunError,
)
from ..yamux import Config, Session
from . import koding
from .addr import parse_addr
from .events import StateFeed
from .http1 import find_head_end
from .splice import CloseAtOnce, Pipe, PipeEnd
from .tap import StreamTaps, TappedPipe

logger = logging.getLogger("ytun.client")

#: What the client answers on an HTTP stream when its local service is down.
NO_LOCAL_SERVER = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 15\r\n\r\nno local server"

StringSource = Callable[[], "str | Awaitable[str]"]
AddressSource = Callable[[int], "str | Awaitable[str]"]


class ClientState(enum.IntEnum):
    UNKNOWN = 0
    STARTED = 1
    CONNECTING = 2
    CONNECTED = 3
    DISCONNECTED = 4
    CLOSED = 5


@dataclass(frozen=True)
class ClientStateChange:
    previous: ClientState
    current: ClientState
    error: BaseException | None = None

    def __str__(self) -> str:
        text = f"{self.previous.name.title()}->{self.current.name.title()}"
        return f"{text} ({self.error})" if self.error else text


class Backoff(Protocol):
    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt; None to give up."""

    def reset(self) -> None: ...


class ExponentialBackoff:
    """koding/tunnel's default: 0.5 s, ×1.5 per attempt, at most 60 s, ±50 % jitter."""

    def __init__(
        self,
        initial: float = 0.5,
        multiplier: float = 1.5,
        maximum: float = 60.0,
        jitter: float = 0.5,
        max_attempts: int | None = None,
    ) -> None:
        self.initial, self.multiplier, self.maximum = initial, multiplier, maximum
        self.jitter, self.max_attempts = jitter, max_attempts
        self.reset()

    def reset(self) -> None:
        self._interval = self.initial
        self._attempts = 0

    def next_delay(self) -> float | None:
        self._attempts += 1
        if self.max_attempts is not None and self._attempts > self.max_attempts:
            return None
        delay = self._interval * (1 + self.jitter * (2 * random.random() - 1))
        self._interval = min(self._interval * self.multiplier, self.maximum)
        return delay


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Client:
    """Keeps one tunnel to the server alive and serves its streams from local services.

    ``server_addr``/``identifier`` may be replaced by ``fetch_server_addr``/
    ``fetch_identifier`` callables (sync or async), asked on every connection attempt.
    ``server_addr`` (or what ``fetch_server_addr`` gives) may name several servers, comma
    separated (the nodes of one cluster): a failed attempt or an ended session moves to
    the next one at once, and the backoff waits only after a whole round has failed.
    HTTP and WebSocket streams go to ``local_addr``, or to ``127.0.0.1:<port of the public
    Host>`` (port 0 means 80). TCP streams go to ``tcp_local[port]``, else
    ``fetch_local_addr(port)``, else ``127.0.0.1:<port>``. An ``inspector``
    (:class:`ytun.inspector.Inspector`) records the HTTP requests and answers.
    """

    def __init__(
        self,
        server_addr: str | None = None,
        identifier: str | None = None,
        *,
        fetch_server_addr: StringSource | None = None,
        fetch_identifier: StringSource | None = None,
        local_addr: str | None = None,
        tcp_local: dict[int, str] | None = None,
        fetch_local_addr: AddressSource | None = None,
        ssl: ssl_module.SSLContext | None = None,
        backoff: Backoff | None = None,
        yamux_config: Config | None = None,
        on_state_change: Callable[[ClientStateChange], None] | None = None,
        dial_timeout: float = koding.CONTROL_TIMEOUT,
        exit_on_refused: bool = False,
        inspector: StreamTaps | None = None,
    ) -> None:
        if not server_addr and fetch_server_addr is None:
            raise ValueError("neither server_addr nor fetch_server_addr is set")
        if not identifier and fetch_identifier is None:
            raise ValueError("neither identifier nor fetch_identifier is set")
        self._fetch_server_addr: StringSource = fetch_server_addr or (lambda: server_addr or "")
        self._fetch_identifier: StringSource = fetch_identifier or (lambda: identifier or "")
        self.local_addr = local_addr
        self.tcp_local = dict(tcp_local or {})
        self.fetch_local_addr = fetch_local_addr
        self.ssl = ssl
        self.backoff: Backoff = backoff or ExponentialBackoff()
        # Which of several servers is tried next, and attempts since the last success.
        self._server_index = 0
        self._server_count = 1
        self._failed_attempts = 0
        self.yamux_config = yamux_config
        self.dial_timeout = dial_timeout
        #: Stop (instead of retrying) when the server does not know the identifier.
        self.exit_on_refused = exit_on_refused
        #: Sees a copy of each HTTP and WebSocket stream (the request inspector); None
        #: leaves the streams untouched.
        self.inspector = inspector
        self._states: StateFeed[ClientStateChange] = StateFeed(
            on_state_change, logger, is_last=lambda change: change.current is ClientState.CLOSED
        )
        self.state = ClientState.UNKNOWN
        self._session: Session | None = None
        self._closing = False
        self._connected: asyncio.Event | None = None
        self._wake: asyncio.Future[None] | None = None
        self._dialing: asyncio.Transport | None = None  # a connection still in CONNECT
        self._http_streams = 0
        self._idle: asyncio.Event | None = None

    # -- state ---------------------------------------------------------------------------

    def state_changes(self) -> AsyncIterator[ClientStateChange]:
        """Every state change from this call on, until the client is closed."""
        return self._states.subscribe()

    def _set_state(self, state: ClientState, error: BaseException | None = None) -> None:
        change = ClientStateChange(self.state, state, error)
        self.state = state
        logger.debug("client state %s", change)
        self._states.publish(change)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the tunnel is up (the handshake completed)."""
        if self._connected is None:
            self._connected = asyncio.Event()
        await asyncio.wait_for(self._connected.wait(), timeout)

    # -- connection loop -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect and keep reconnecting until :meth:`close`; returns once closed."""
        if self._connected is None:
            self._connected = asyncio.Event()
        self._closing = False
        self._set_state(ClientState.STARTED)
        self.backoff.reset()
        error: BaseException | None = None
        reason = ""
        first = True
        while not self._closing:
            self._set_state(ClientState.CONNECTING, error)
            if not first:
                self._server_index += 1
                self._failed_attempts += 1
            if not first and self._failed_attempts % self._server_count:
                # Another server of the list has not been tried since the last success.
                logger.warning("%s; trying the next server", reason)
            elif not first:
                delay = self.backoff.next_delay()
                if delay is None or delay < 0:
                    self._set_state(
                        ClientState.CLOSED,
                        RedialAbortedError("unable to restore the connection, aborting"),
                    )
                    return
                logger.warning("%s; retrying in %.1f s", reason, delay)
                await self._sleep(delay)
                if self._closing:
                    break
            first = False
            try:
                error = await self._run_once()
                reason = f"tunnel disconnected: {error}"
            except IdentifierRefusedError as exc:
                error = exc
                reason = str(exc)
                if self.exit_on_refused:
                    logger.error("%s; not retrying", exc)
                    break
            except (OSError, asyncio.TimeoutError, YtunError, ValueError) as exc:
                error = exc
                reason = _describe(exc)
        self._set_state(ClientState.CLOSED, error)

    async def _sleep(self, delay: float) -> None:
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._wake), delay)
        except asyncio.TimeoutError:
            pass
        finally:
            self._wake = None

    async def _run_once(self) -> BaseException | None:
        """One connection: dial, CONNECT, handshake, serve until the session ends."""
        identifier = await _resolve(self._fetch_identifier())
        servers = [a.strip() for a in (await _resolve(self._fetch_server_addr())).split(",")]
        servers = [address for address in servers if address]
        self._server_count = max(len(servers), 1)
        server_addr = servers[self._server_index % len(servers)] if servers else ""
        if self._closing:  # close() was called while the fetchers ran
            return None
        if not identifier or not server_addr:
            raise TunnelError("empty identifier or server address")
        host, port = parse_addr(server_addr, 443 if self.ssl else 80)
        loop = asyncio.get_running_loop()
        try:
            transport, handshake = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _ConnectHandshake(identifier),
                    host,
                    port,
                    ssl=self.ssl,
                    server_hostname=host if self.ssl else None,
                ),
                self.dial_timeout,
            )
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"no answer from the server at {host}:{port} within {self.dial_timeout} s"
            ) from None
        except OSError as exc:  # the same type, with the address that was tried
            raise OSError(
                exc.errno, f"cannot reach the server at {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self._dialing = transport  # close() aborts it
        try:
            if self._closing:
                raise TunnelError("client closed")
            extra = await asyncio.wait_for(handshake.done, koding.CONTROL_TIMEOUT)
            session = Session(client=True, config=self.yamux_config)
            session.take_over(transport, extra)
        except BaseException:
            transport.abort()
            raise
        finally:
            self._dialing = None
        self._session = session
        try:
            _, control = session.open_stream_nowait(lambda: _ClientControl(self, session))
            await asyncio.wait_for(control.ready, koding.CONTROL_TIMEOUT)
        except BaseException:
            session.abort()
            self._session = None
            raise
        logger.info("tunnel connected to %s; %s", server_addr, self._describe_routes())
        self.backoff.reset()
        self._failed_attempts = 0
        self._set_state(ClientState.CONNECTED)
        assert self._connected is not None
        self._connected.set()
        await session.wait_closed()
        self._connected.clear()
        self._session = None
        error = control.error or session.error
        self._set_state(ClientState.DISCONNECTED, error)
        return error

    async def close(self, grace: float = koding.CONTROL_TIMEOUT) -> None:
        """Stop reconnecting; let in-flight HTTP requests finish (up to ``grace``); close."""
        self._closing = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        session = self._session
        if session is None:
            if self._dialing is not None:  # mid-CONNECT: give up this attempt now
                self._dialing.abort()
            return
        session.go_away()
        if self._http_streams:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except asyncio.TimeoutError:
                logger.warning("closing with %d HTTP requests still in flight", self._http_streams)
        session.close()
        await session.wait_closed()

    # -- streams -------------------------------------------------------------------------

    def _stream_protocol(self, message: koding.ControlMessage) -> asyncio.BaseProtocol:
        if message.protocol in (koding.HTTP, koding.WS, koding.TCP):
            return _LocalDialer(self, message)
        logger.error(
            "server asked for unknown transport protocol %d; closing the stream", message.protocol
        )
        return CloseAtOnce()

    def _describe_routes(self) -> str:
        http = self.local_addr or "127.0.0.1:<port of the public Host>"
        routes = [f"HTTP and WebSocket -> {http}"]
        routes += [f"TCP {port} -> {address}" for port, address in sorted(self.tcp_local.items())]
        return ", ".join(routes)

    async def _local_address(self, message: koding.ControlMessage) -> tuple[str, int]:
        port = message.local_port
        if message.protocol == koding.TCP:
            if port in self.tcp_local:
                return parse_addr(self.tcp_local[port])
            if self.fetch_local_addr is not None:
                return parse_addr(await _resolve(self.fetch_local_addr(port)))
            # The public port is a listener of the server: on the server's machine the
            # default target is that listener itself, and every connection would loop.
            if self._server_is_local():
                raise TunnelLoopError(
                    f"TCP port {port} has no local address (--tcp-local {port}=ADDR) and the "
                    f"default 127.0.0.1:{port} is the server's own listener on this machine"
                )
            return "127.0.0.1", port
        if self.local_addr is not None:
            return parse_addr(self.local_addr)
        port = port or 80
        session = self._session
        server = session.get_extra_info("peername") if session is not None else None
        if self._server_is_local() and isinstance(server, tuple) and server[1] == port:
            raise TunnelLoopError(
                f"no local address is set (--local) and the default 127.0.0.1:{port} is the "
                "server itself on this machine"
            )
        return "127.0.0.1", port

    def _server_is_local(self) -> bool:
        """True when the server runs on this machine (so its ports are not ours to use)."""
        session = self._session
        if session is None:
            return False
        server = session.get_extra_info("peername")
        ours = session.get_extra_info("sockname")
        if not isinstance(server, tuple) or not isinstance(ours, tuple):
            return False
        try:
            return ipaddress.ip_address(server[0]).is_loopback or server[0] == ours[0]
        except ValueError:
            return False

    def _http_stream_done(self) -> None:
        self._http_streams -= 1
        if not self._http_streams and self._idle is not None:
            self._idle.set()


class _ConnectHandshake(asyncio.Protocol):
    """Sends the CONNECT and waits for ``200 Connected to Tunnel`` (bare LF accepted)."""

    def __init__(self, identifier: str) -> None:
        self._identifier = identifier
        self._buffer = b""
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        host = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        transport.write(koding.connect_request(host, self._identifier))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self._buffer += data
        end = find_head_end(self._buffer)
        if end < 0:
            if len(self._buffer) > 64 * 1024:
                self.done.set_exception(TunnelError("oversized reply to CONNECT"))
            return
        head, extra = self._buffer[:end], self._buffer[end:]
        status = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
        if status.partition(" ")[2] == koding.CONNECTED_STATUS:
            self.done.set_result(extra)
        elif extra.startswith(koding.REFUSED_BODY):
            self.done.set_exception(
                IdentifierRefusedError("the server does not know this identifier")
            )
        else:
            body = extra.decode("utf-8", "replace").strip()
            self.done.set_exception(
                TunnelError(
                    f"tunnel server error: status={status.partition(' ')[2][:3]}, body={body}"
                )
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(TunnelError("server closed the connection during CONNECT"))
            self.done.exception()  # retrieved: after close() nobody may be waiting


class _ClientControl(asyncio.Protocol):
    """Control stream, client side: handshake, then open one stream per message, in order."""

    def __init__(self, client: Client, session: Session) -> None:
        self._client = client
        self._session = session
        self._buffer = b""
        self._decoder = koding.ControlDecoder()
        self._backlog: deque[koding.ControlMessage] = deque()
        self._opener: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._stream = transport
        transport.write(koding.HANDSHAKE_REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self._buffer += data
            size = len(koding.HANDSHAKE_RESPONSE)
            if len(self._buffer) < size:
                if not koding.HANDSHAKE_RESPONSE.startswith(self._buffer):
                    self._fail(TunnelError("handshake refused by the server"))
                return
            if self._buffer[:size] != koding.HANDSHAKE_RESPONSE:
                self._fail(TunnelError("handshake refused by the server"))
                return
            self.ready.set_result(None)
            data, self._buffer = self._buffer[size:], b""
            if not data:
                return
        try:
            messages = self._decoder.feed(data)
        except ValueError as exc:
            self._fail(TunnelError(f"failure decoding control message: {exc}"))
            return
        self._backlog.extend(messages)
        self._open_streams()

    def _open_streams(self) -> None:
        while self._backlog and self._opener is None:
            message = self._backlog[0]
            try:
                self._session.open_stream_nowait(
                    functools.partial(self._client._stream_protocol, message)
                )
            except StreamLimitError:
                self._opener = asyncio.get_running_loop().create_task(self._open_later())
                return
            except SessionClosedError:
                self._backlog.clear()
                return
            self._backlog.popleft()

    async def _open_later(self) -> None:
        message = self._backlog.popleft()
        try:
            await self._session.open_stream(lambda: self._client._stream_protocol(message))
        except SessionClosedError:
            self._backlog.clear()
            return
        finally:
            self._opener = None
        self._open_streams()

    def eof_received(self) -> bool:
        self._fail(TunnelError("failure decoding control message: EOF"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None and exc is not None:
            self.error = exc
        if not self.ready.done():
            self.ready.set_exception(TunnelError("control stream closed during the handshake"))
            self.ready.exception()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()
        self._session.close()


class _LocalDialer(PipeEnd):
    """Stream side of a pipe that dials the local service when the stream opens."""

    def __init__(self, client: Client, message: koding.ControlMessage) -> None:
        super().__init__(_pipe_for(client.inspector, message), 0)
        self._client = client
        self._message = message
        self._counted = message.protocol == koding.HTTP

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._counted:
            self._client._http_streams += 1
        task = asyncio.get_running_loop().create_task(self._dial(transport))
        task.add_done_callback(_log_unexpected)

    async def _dial(self, stream: Any) -> None:
        client = self._client
        target = f"the address for port {self._message.local_port}"
        try:
            host, port = await client._local_address(self._message)
            target = f"{host}:{port}"
            await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    lambda: self._pipe.sides[1], host, port
                ),
                client.dial_timeout,
            )
        except Exception as exc:  # also whatever a user's fetch_local_addr raises
            logger.error(
                "dialing the local service at %s failed: %s",
                target,
                (exc.strerror or exc) if isinstance(exc, OSError) else exc or type(exc).__name__,
            )
            if stream.is_closing():
                return
            if self._message.protocol != koding.TCP:
                stream.write(NO_LOCAL_SERVER)
            stream.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._counted:
            self._counted = False
            self._client._http_stream_done()


def _pipe_for(inspector: StreamTaps | None, message: koding.ControlMessage) -> Pipe:
    # The one place the inspector joins the data path: a stream it does not watch gets
    # the plain pipe, so an absent inspector costs one test per stream.
    if inspector is not None and message.protocol != koding.TCP:
        observer = inspector.observe(message.protocol, message.local_port)
        if observer is not None:
            return TappedPipe(observer)
    return Pipe()


def _log_unexpected(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("local dial failed", exc_info=task.exception())


def _describe(error: BaseException) -> str:
    if isinstance(error, YtunError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"tunnel connection failed: {error or type(error).__name__}"
