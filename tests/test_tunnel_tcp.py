"""Raw TCP tunnels (koding/tunnel §1.9 and its TestSingleTCP / TestMultipleTCP /
TestMultipleLatencyTCP / TestMultipleStreamTCP), plus what ytun adds: half-close carried
across the tunnel both ways, clean refusals, delete_addr, and a large transfer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from tunnel_helpers import Tunnel

from ytun import Client, Server

TIMEOUT = 10


def _can_bind(address: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


# Linux answers on all of 127.0.0.0/8; macOS configures only 127.0.0.1 by default.
needs_second_loopback = pytest.mark.skipif(
    not _can_bind("127.0.0.2"), reason="127.0.0.2 is not a local address on this machine"
)


class LocalServer:
    """An asyncio TCP server on 127.0.0.1 for the client side of the tunnel."""

    def __init__(
        self,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        port: int = 0,
    ) -> None:
        self._handler = handler
        self.port = port
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def __aenter__(self) -> LocalServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.wait_for(self._server.wait_closed(), TIMEOUT)


def echo_handler(prefix: bytes = b"", latency: Callable[[], float] | None = None):
    """Echo each line back (after ``latency()`` seconds), prefixed with ``prefix``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            if latency is not None:
                await asyncio.sleep(latency())
            writer.write(prefix + line)
            await writer.drain()

    return handle


async def exchange(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Connect to the public side, send one line, return the line that comes back."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    try:
        writer.write(payload + b"\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), TIMEOUT)
    finally:
        writer.close()


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), TIMEOUT)


async def assert_closed_at_once(port: int, host: str = "127.0.0.1") -> None:
    """The public connection is accepted and then closed without any data, quickly."""
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    try:
        writer.write(b"anyone there?\n")
        try:
            data = await asyncio.wait_for(reader.read(), 2)
        except ConnectionResetError:
            data = b""
    finally:
        writer.close()
    assert data == b""
    assert time.monotonic() - started < 1.5


async def wait_for_condition(condition: Callable[[], bool], timeout: float = 5) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def routes_fetcher(routes: dict[int, str]) -> Callable[[int], str]:
    def fetch(port: int) -> str:
        return routes[port]

    return fetch


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


# -- the upstream tests ----------------------------------------------------------------


async def test_single_tcp_with_fetch_local_addr():
    routes: dict[int, str] = {}
    calls: list[int] = []

    async def fetch(port: int) -> str:  # async fetchers are allowed too
        calls.append(port)
        return routes[port]

    async with (
        LocalServer(echo_handler()) as local,
        Tunnel(client_kwargs={"fetch_local_addr": fetch}) as tunnel,
    ):
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        assert port != 0
        routes[port] = local.addr
        assert await exchange(port, b"hello tcp") == b"hello tcp\n"
        assert calls == [port]  # asked with the public port
        assert local.connections == 1


async def test_single_tcp_with_tcp_local_and_a_listening_socket():
    sock = free_socket()
    port = sock.getsockname()[1]
    async with (
        LocalServer(echo_handler(b"local:")) as local,
        Tunnel(client_kwargs={"tcp_local": {port: local.addr}}) as tunnel,
    ):
        assert await tunnel.server.add_addr(sock, tunnel.identifier) == ("127.0.0.1", port)
        assert await exchange(port, b"via tcp_local") == b"local:via tcp_local\n"
        # The same socket again (say for an IP route) reuses its listener.
        assert await tunnel.server.add_addr(sock, tunnel.identifier, ip="127.0.0.1") == (
            "127.0.0.1",
            port,
        )
        assert await exchange(port, b"again") == b"local:again\n"


@needs_second_loopback
async def test_default_local_address_is_the_public_port_on_loopback(monkeypatch):
    """Without tcp_local or fetch_local_addr the client dials 127.0.0.1:<public port>
    (when the server is on another machine; here the check is told so)."""
    async with Tunnel() as tunnel:
        monkeypatch.setattr(tunnel.client, "_server_is_local", lambda: False)
        _, port = await tunnel.server.add_addr("127.0.0.2:0", tunnel.identifier)
        local = LocalServer(echo_handler(b"default:"), port)
        try:
            await local.__aenter__()
        except OSError:
            pytest.skip(f"127.0.0.1:{port} is taken")
        try:
            assert await exchange(port, b"x", host="127.0.0.2") == b"default:x\n"
        finally:
            await local.__aexit__()


async def test_default_local_address_that_is_the_server_itself_is_refused(caplog):
    """On the server's machine, the default 127.0.0.1:<public port> is the server's own
    TCP listener: dialing it would loop (each dial a new public connection). Refused."""
    async with Tunnel() as tunnel:
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        with caplog.at_level(logging.ERROR, logger="ytun.client"):
            await assert_closed_at_once(port)
        await asyncio.sleep(0.2)
        assert tunnel.server.clients[0].streams <= 2  # the control stream, and no loop
    messages = [r.getMessage() for r in caplog.records if r.name == "ytun.client"]
    assert any(f"--tcp-local {port}=ADDR" in m and "server's own listener" in m for m in messages)


async def test_http_default_that_is_the_server_itself_is_refused(caplog):
    """Without local_addr the client sends HTTP to 127.0.0.1:<Host port>; when that is the
    tunnel server's own address the request would come straight back: 503, not a loop."""
    async with Tunnel(client_kwargs={"local_addr": None}) as tunnel:
        with caplog.at_level(logging.ERROR, logger="ytun.client"):
            async with (
                aiohttp.ClientSession() as session,
                session.get(tunnel.url, headers={"Host": tunnel.host}) as response,
            ):
                assert response.status == 503
                assert await response.text() == "no local server"
    assert any("is the server itself" in r.getMessage() for r in caplog.records)


async def test_multiple_tcp():
    routes: dict[int, str] = {}
    async with (
        LocalServer(echo_handler()) as local,
        Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)}) as tunnel,
    ):
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        routes[port] = local.addr
        payloads = [f"message #{i} {random.random()}".encode() for i in range(100)]
        answers = await asyncio.gather(*(exchange(port, p) for p in payloads))
        assert answers == [p + b"\n" for p in payloads]
        assert local.connections == 100


async def test_multiple_latency_tcp():
    routes: dict[int, str] = {}
    handler = echo_handler(latency=lambda: random.uniform(0, 0.3))
    async with (
        LocalServer(handler) as local,
        Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)}) as tunnel,
    ):
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        routes[port] = local.addr
        payloads = [f"slow #{i}".encode() for i in range(100)]
        answers = await asyncio.gather(*(exchange(port, p) for p in payloads))
        assert answers == [p + b"\n" for p in payloads]


@needs_second_loopback
async def test_multiple_stream_tcp():
    """One identifier serves HTTP plus port-based and IP-based TCP tunnels at once; each
    public address reaches its own local server."""
    routes: dict[int, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        tunnel = await stack.enter_async_context(
            Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)})
        )
        server, ident = tunnel.server, tunnel.identifier
        targets: list[tuple[str, int, bytes]] = []  # (public host, public port, prefix)
        for name in (b"port-a:", b"port-b:"):
            local = await stack.enter_async_context(LocalServer(echo_handler(name)))
            _, port = await server.add_addr("127.0.0.1:0", ident)
            routes[port] = local.addr
            targets.append(("127.0.0.1", port, name))
        # An IP-routed listener on every interface: reached on 127.0.0.1 and 127.0.0.2.
        local = await stack.enter_async_context(LocalServer(echo_handler(b"by-ip:")))
        host, port = await server.add_addr("0.0.0.0:0", ident, ip="127.0.0.2")
        assert host == "0.0.0.0"
        assert await server.add_addr(f"0.0.0.0:{port}", ident, ip="127.0.0.1") == ("0.0.0.0", port)
        routes[port] = local.addr
        targets += [("127.0.0.1", port, b"by-ip:"), ("127.0.0.2", port, b"by-ip:")]

        async def tcp(i: int) -> None:
            host, port, prefix = targets[i % len(targets)]
            payload = f"{host}:{port} #{i}".encode()
            assert await exchange(port, payload, host) == prefix + payload + b"\n"

        async with aiohttp.ClientSession() as http:

            async def get(i: int) -> None:
                async with http.get(
                    f"{tunnel.url}/?echo=http{i}", headers={"Host": tunnel.host}
                ) as response:
                    assert response.status == 200
                    assert await response.text() == f"http{i}"

            await asyncio.wait_for(
                asyncio.gather(*(tcp(i) for i in range(40)), *(get(i) for i in range(20))), 30
            )


@needs_second_loopback
async def test_ip_route_is_chosen_by_the_local_address():
    """On a 0.0.0.0 listener with only an IP route for 127.0.0.2, a connection that arrives
    on 127.0.0.1 has no route and is closed; one on 127.0.0.2 is tunnelled."""
    routes: dict[int, str] = {}
    async with (
        LocalServer(echo_handler(b"ip:")) as local,
        Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)}) as tunnel,
    ):
        _, port = await tunnel.server.add_addr("0.0.0.0:0", tunnel.identifier, ip="127.0.0.2")
        routes[port] = local.addr
        assert await exchange(port, b"hi", "127.0.0.2") == b"ip:hi\n"
        await assert_closed_at_once(port, "127.0.0.1")
        assert local.connections == 1


@needs_second_loopback
async def test_add_addr_refuses_a_port_that_another_listener_serves():
    """A second address with a port already tunnelled elsewhere must not be reported as
    listening (nor re-route the first listener's port); the same listener again is fine."""
    routes: dict[int, str] = {}
    async with (
        LocalServer(echo_handler(b"first:")) as local,
        Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)}) as tunnel,
    ):
        server = tunnel.server
        _, port = await server.add_addr("127.0.0.1:0", tunnel.identifier)
        routes[port] = local.addr
        with pytest.raises(OSError):
            await server.add_addr(f"127.0.0.2:{port}", "SOMEONE-ELSE")
        with socket.socket() as sock:  # the same port on another address, as a socket
            sock.bind(("127.0.0.2", port))
            with pytest.raises(OSError):
                await server.add_addr(sock, "SOMEONE-ELSE")
        assert server.registry.lookup_addr("127.0.0.1", port) == server.registry.key_for(
            tunnel.identifier
        )
        assert await server.add_addr(f"127.0.0.1:{port}", tunnel.identifier) == ("127.0.0.1", port)
        assert await exchange(port, b"still mine") == b"first:still mine\n"


# -- half-close ------------------------------------------------------------------------


async def test_public_half_close_reaches_the_local_server():
    """The public client sends, then write_eof; the local server reads to EOF, answers and
    closes; the public client gets the whole answer, then EOF."""
    routes: dict[int, str] = {}

    async def digest_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await reader.read()  # only returns at EOF
        writer.write(b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode()))
        await writer.drain()

    payload = random.randbytes(300_000)
    async with (
        LocalServer(digest_then_close) as local,
        Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)}) as tunnel,
    ):
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        routes[port] = local.addr
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(payload)
            writer.write_eof()
            answer = await read_to_eof(reader)
        finally:
            writer.close()
        assert answer == b"%d %s" % (len(payload), hashlib.sha256(payload).hexdigest().encode())


async def test_public_half_close_without_any_data():
    """EOF alone (no bytes before it) is carried across, even though it can arrive before
    the client has dialled its local server."""
    routes: dict[int, str] = {}

    async def count_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await reader.read()
        writer.write(b"got %d bytes" % len(body))
        await writer.drain()

    async with (
        LocalServer(count_then_close) as local,
        Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)}) as tunnel,
    ):
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        routes[port] = local.addr
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write_eof()
                assert await read_to_eof(reader) == b"got 0 bytes"
            finally:
                writer.close()


async def test_local_half_close_reaches_the_public_client():
    """The local server sends a banner and closes its write side first; the public client
    sees the banner and EOF, and can still send; the local server gets those bytes."""
    routes: dict[int, str] = {}
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def banner_then_listen(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"banner\n")
        writer.write_eof()
        data = await reader.read()
        received.set_result(data)

    async with (
        LocalServer(banner_then_listen) as local,
        Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)}) as tunnel,
    ):
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        routes[port] = local.addr
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await read_to_eof(reader) == b"banner\n"
            assert not received.done()
            writer.write(b"still talking after your EOF")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b", and done")
            writer.write_eof()
            assert await asyncio.wait_for(received, TIMEOUT) == (
                b"still talking after your EOF, and done"
            )
        finally:
            writer.close()


# -- refusals --------------------------------------------------------------------------


async def test_no_route_closes_at_once():
    async with Tunnel() as tunnel:
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        tunnel.server.registry.delete_addr(port)  # the listener stays, the route is gone
        await assert_closed_at_once(port)


async def test_no_client_connected_closes_at_once():
    server = Server()
    server.add_host("app.test", "NOBODY-HOME")
    _, port = await server.add_addr("127.0.0.1:0", "NOBODY-HOME")
    try:
        await assert_closed_at_once(port)
    finally:
        await server.close(grace=0)


async def test_client_gone_closes_at_once():
    async with (
        LocalServer(echo_handler()) as local,
        Tunnel(client_kwargs={"tcp_local": {}}) as tunnel,
    ):
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        tunnel.client.tcp_local[port] = local.addr
        assert await exchange(port, b"before") == b"before\n"
        await tunnel.client.close(grace=1)
        await asyncio.wait_for(tunnel.client_task, TIMEOUT)
        await wait_for_condition(lambda: not tunnel.server.is_connected(tunnel.identifier))
        await assert_closed_at_once(port)


async def test_local_server_down_closes_the_public_connection():
    routes: dict[int, str] = {}
    async with Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)}) as tunnel:
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        dead = free_socket()
        routes[port] = f"127.0.0.1:{dead.getsockname()[1]}"
        dead.close()  # nothing listens there
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await read_to_eof(reader) == b""
        finally:
            writer.close()


async def test_failing_fetch_local_addr_closes_the_public_connection():
    """Whatever fetch_local_addr raises, the stream is closed instead of left hanging."""

    def fetch(port: int) -> str:
        raise LookupError(f"no local service for {port}")

    async with Tunnel(client_kwargs={"fetch_local_addr": fetch}) as tunnel:
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await read_to_eof(reader) == b""
        finally:
            writer.close()


async def test_public_side_gone_before_the_local_dial_closes_the_local_connection():
    """If the public connection dies while the client is still dialling its local server,
    the local connection is closed as soon as it exists (not left paused forever)."""
    release = asyncio.Event()
    local_eof: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    asked = asyncio.Event()

    async def wait_for_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        if not local_eof.done():
            local_eof.set_result(data)

    async with LocalServer(wait_for_eof) as local:

        async def fetch(port: int) -> str:
            asked.set()
            await release.wait()
            return local.addr

        async with Tunnel(client_kwargs={"fetch_local_addr": fetch}) as tunnel:
            _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.wait_for(asked.wait(), TIMEOUT)
            writer.transport.abort()
            await asyncio.sleep(0.1)  # the reset travels through the tunnel
            release.set()
            assert await asyncio.wait_for(local_eof, 5) == b""


async def test_delete_addr_stops_new_connections_but_open_ones_continue():
    routes: dict[int, str] = {}
    async with (
        LocalServer(echo_handler()) as local,
        Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)}) as tunnel,
    ):
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        routes[port] = local.addr
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"one\n")
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"one\n"
            tunnel.server.delete_addr(port)
            await asyncio.sleep(0.05)
            with pytest.raises(OSError):  # the listener is gone: refused
                await exchange(port, b"new")
            writer.write(b"two\n")
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"two\n"
        finally:
            writer.close()
        assert local.connections == 1


# -- volume ----------------------------------------------------------------------------


async def test_twenty_mebibytes_both_ways():
    size = 20 * 1024 * 1024
    up = random.randbytes(size)
    down = random.randbytes(size)
    routes: dict[int, str] = {}
    local_got: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    async def send_all(writer: asyncio.StreamWriter, data: bytes) -> None:
        view = memoryview(data)
        for offset in range(0, len(data), 1 << 18):
            writer.write(view[offset : offset + (1 << 18)])
            await writer.drain()
        writer.write_eof()

    async def digest(reader: asyncio.StreamReader) -> tuple[int, str]:
        total, hasher = 0, hashlib.sha256()
        while chunk := await reader.read(1 << 16):
            total += len(chunk)
            hasher.update(chunk)
        return total, hasher.hexdigest()

    async def local_side(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender = asyncio.ensure_future(send_all(writer, down))
        local_got.set_result(await digest(reader))
        await sender

    async with (
        LocalServer(local_side) as local,
        Tunnel(client_kwargs={"fetch_local_addr": routes_fetcher(routes)}) as tunnel,
    ):
        _, port = await tunnel.server.add_addr("127.0.0.1:0", tunnel.identifier)
        routes[port] = local.addr
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            sender = asyncio.ensure_future(send_all(writer, up))
            public_got = await asyncio.wait_for(digest(reader), 60)
            await asyncio.wait_for(sender, TIMEOUT)
        finally:
            writer.close()
        assert public_got == (size, hashlib.sha256(down).hexdigest())
        assert await asyncio.wait_for(local_got, TIMEOUT) == (size, hashlib.sha256(up).hexdigest())


async def test_a_client_with_only_tcp_routes_is_accepted():
    """No virtual host uses the identifier, only a TCP route: the client may connect
    (koding/tunnel's server refuses it; its client works either way)."""
    changes = []
    server = Server(on_state_change=changes.append)
    listener = await server.serve("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with LocalServer(echo_handler(b"tcp-only:")) as local:
        _, public_port = await server.add_addr("127.0.0.1:0", "TCP-ONLY-SECRET")
        client = Client(
            f"127.0.0.1:{port}",
            "TCP-ONLY-SECRET",
            tcp_local={public_port: local.addr},
            exit_on_refused=True,
        )
        task = asyncio.ensure_future(client.start())
        try:
            await client.wait_connected(timeout=TIMEOUT)
            assert await exchange(public_port, b"hello") == b"tcp-only:hello\n"
            assert [c.label for c in changes] == [f"tcp:{public_port}"]
            assert "TCP-ONLY-SECRET" not in repr(changes)
        finally:
            await client.close(grace=1)
            await asyncio.wait_for(task, TIMEOUT)
            await server.close(grace=0)
