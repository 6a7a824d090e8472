"""koding/tunnel's wire protocol, byte for byte, without Go: a scripted peer plays the Go
client against ytun's Server, and a scripted fake server plays the Go server against ytun's
Client. The expected bytes come from the reference capture (go-reference-run.md §5) and
the protocol notes (koding-tunnel-protocol.md §1), written out here literally rather than
taken from ``ytun.tunnel.koding``, so a change there cannot silently change the test too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from tunnel_helpers import origin_app
from yamux_helpers import HEADER, Frame, frame

from ytun import Client, ClientState, Server
from ytun.tunnel.client import ExponentialBackoff
from ytun.yamux import Config

DATA, WINDOW, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8

IDENT = "wire-identifier-5678"
CONNECTED = b"HTTP/1.1 200 Connected to Tunnel\n\n"
NO_LOCAL_SERVER = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 15\r\n\r\nno local server"


def go_connect(host: str, identifier: str) -> bytes:
    """The CONNECT the Go client writes (go-reference-run.md §5.1)."""
    return (
        b"CONNECT /_controlPath/ HTTP/1.1\r\nHost: "
        + host.encode()
        + b"\r\nUser-Agent: Go-http-client/1.1\r\nX-Ktunnel-Identifier: "
        + identifier.encode()
        + b"\r\n\r\n"
    )


def control(protocol: int, port: int) -> bytes:
    return b'{"action":1,"transportProtocol":%d,"localPort":%d}\n' % (protocol, port)


def test_go_connect_matches_the_capture() -> None:
    captured = bytes.fromhex(
        "434f4e4e454354202f5f636f6e74726f6c506174682f20485454502f312e310d0a486f73743a2031"
        "32372e302e302e313a383030300d0a557365722d4167656e743a20476f2d687474702d636c69656e"
        "742f312e310d0a582d4b74756e6e656c2d4964656e7469666965723a20313233340d0a0d0a"
    )
    assert go_connect("127.0.0.1:8000", "1234") == captured
    assert len(captured) == 117
    assert (
        bytes.fromhex("485454502f312e312032303020436f6e6e656374656420746f2054756e6e656c0a0a")
        == CONNECTED
    )


# -- a raw yamux peer ------------------------------------------------------------------------


class WirePeer:
    """One end of a koding connection driven frame by frame by the test.

    Before :meth:`start`, frames are read one at a time with :meth:`read_frame`. After it,
    a reader task records every frame, collects Data per stream, notes FINs, and answers
    pings (unless ``answer_pings`` is off)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames: list[Frame] = []
        self.data: dict[int, bytearray] = defaultdict(bytearray)
        self.fins: set[int] = set()
        self.closed = False
        self.answer_pings = True
        self._task: asyncio.Task[None] | None = None

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    def data_frame(self, stream_id: int, payload: bytes, flags: int = 0) -> None:
        self.send(frame(DATA, flags, stream_id, len(payload), payload))

    async def read_frame(self, timeout: float = 5) -> Frame:
        header = await asyncio.wait_for(self.reader.readexactly(12), timeout)
        version, frame_type, flags, stream_id, length = HEADER.unpack(header)
        assert version == 0
        payload = b""
        if frame_type == DATA and length:
            payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return Frame(frame_type, flags, stream_id, length, payload)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                got = await self.read_frame(timeout=60)
                if got.type == PING and got.flags & SYN and self.answer_pings:
                    self.send(frame(PING, ACK, 0, got.length))
                self.frames.append(got)
                if got.type == DATA:
                    self.data[got.stream_id] += got.payload
                if got.type in (DATA, WINDOW) and got.flags & FIN:
                    self.fins.add(got.stream_id)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed = True

    async def wait(self, condition: Callable[[], bool], timeout: float = 5) -> None:
        async def poll() -> None:
            while not condition():
                await asyncio.sleep(0.005)

        await asyncio.wait_for(poll(), timeout)

    async def wait_data(self, stream_id: int, expected: bytes, timeout: float = 5) -> None:
        """Wait until ``expected`` arrived on the stream, and nothing else."""
        try:
            await self.wait(lambda: len(self.data[stream_id]) >= len(expected), timeout)
        finally:
            assert bytes(self.data[stream_id]) == expected

    def opened(self) -> list[int]:
        """Streams the other side opened (SYN), in order."""
        return [f.stream_id for f in self.frames if f.flags & SYN and f.type in (DATA, WINDOW)]

    def acked(self) -> list[int]:
        return [f.stream_id for f in self.frames if f.flags & ACK and f.type in (DATA, WINDOW)]

    async def aclose(self) -> None:
        self.writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def read_http(
    reader: asyncio.StreamReader, timeout: float = 5
) -> tuple[bytes, dict[str, str], bytes, bytes]:
    """Status line, headers, body and the raw head of one Content-Length response."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status, *lines = head[:-4].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    return status.encode(), headers, body, head


# -- (a) a scripted Go client against ytun's Server ------------------------------------------


@contextlib.asynccontextmanager
async def ytun_server(**kwargs) -> AsyncIterator[tuple[Server, int]]:
    kwargs.setdefault("stream_timeout", 2)
    server = Server(**kwargs)
    listener = await server.serve("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.add_host(f"app.test:{port}", IDENT)
    try:
        yield server, port
    finally:
        await server.close(grace=1)


async def go_client_connect(port: int, identifier: str = IDENT) -> WirePeer:
    """Open the TCP connection and do the CONNECT exactly as the Go client does."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(go_connect(f"127.0.0.1:{port}", identifier))
    assert await asyncio.wait_for(reader.readexactly(len(CONNECTED)), 5) == CONNECTED
    return WirePeer(reader, writer)


async def go_handshake(peer: WirePeer) -> None:
    """Open the control stream as the Go client does; expect the ACK and ``controlOk``."""
    peer.send(frame(WINDOW, SYN, 1, 0), frame(DATA, 0, 1, 16, b"controlHandshake"))
    got = [await peer.read_frame(), await peer.read_frame()]
    got.sort(key=lambda f: f.type, reverse=True)
    ack, ok = got
    assert (ack.type, ack.flags & ACK, ack.stream_id) == (WINDOW, ACK, 1)
    assert (ok.type, ok.flags, ok.stream_id, ok.payload) == (DATA, 0, 1, b"controlOk")


@contextlib.asynccontextmanager
async def go_client(port: int) -> AsyncIterator[WirePeer]:
    peer = await go_client_connect(port)
    try:
        await go_handshake(peer)
        peer.start()
        yield peer
    finally:
        await peer.aclose()


async def test_server_connect_reply_and_handshake_frames() -> None:
    # keepalive every 50 ms: a server that pinged before the client's first frame would
    # show it here (the Go client would lose those bytes)
    config = Config(keepalive_interval=0.05)
    async with ytun_server(yamux_config=config) as (server, port):
        peer = await go_client_connect(port)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(peer.reader.read(1), 0.3)
            peer.send(frame(WINDOW, SYN, 1, 0))
            ack = await peer.read_frame()
            assert (ack.type, ack.flags, ack.stream_id) == (WINDOW, ACK, 1)
            peer.send(frame(DATA, 0, 1, 16, b"controlHandshake"))
            ok = await peer.read_frame()
            assert ok == Frame(DATA, 0, 1, 9, b"controlOk")  # one frame, 9 bytes
            peer.start()
            await peer.wait(lambda: server.is_connected(IDENT))
            # after the first frame, keepalive runs (and we answer it)
            await peer.wait(lambda: any(f.type == PING and f.flags == SYN for f in peer.frames))
            assert server.is_connected(IDENT)
        finally:
            await peer.aclose()


async def test_server_wrong_handshake_ends_session() -> None:
    async with ytun_server() as (server, port):
        peer = await go_client_connect(port)
        try:
            peer.send(frame(WINDOW, SYN, 1, 0), frame(DATA, 0, 1, 16, b"controlHandshakX"))
            peer.start()
            await peer.wait(lambda: peer.closed)
            assert Frame(DATA, 0, 1, 9, b"controlOk") not in peer.frames
            assert peer.frames[-1] == Frame(GO_AWAY, 0, 0, 0)
            assert not server.is_connected(IDENT)
        finally:
            await peer.aclose()


async def test_server_handshake_timeout() -> None:
    async with ytun_server(handshake_timeout=0.3) as (server, port):
        peer = await go_client_connect(port)  # ...and then silence
        try:
            loop = asyncio.get_running_loop()
            began = loop.time()
            peer.start()
            await peer.wait(lambda: peer.closed)
            assert loop.time() - began > 0.2
            assert peer.frames == [Frame(GO_AWAY, 0, 0, 0)]
            assert not server.is_connected(IDENT)
        finally:
            await peer.aclose()


@pytest.mark.parametrize(
    ("sent", "stays"),
    [
        (b'{"note":"the Go client never sends this"}\n', True),
        (b"[1]\n", False),
        (b"not json\n", False),
    ],
)
async def test_server_reads_client_control_values(sent: bytes, stays: bool) -> None:
    """What the client writes on the control stream is decoded and dropped; anything that
    is not a JSON object counts as a disconnect (as in Go)."""
    async with ytun_server() as (server, port), go_client(port) as peer:
        await peer.wait(lambda: server.is_connected(IDENT))
        peer.data_frame(1, sent)
        if stays:
            await asyncio.sleep(0.1)
            assert server.is_connected(IDENT) and not peer.closed
        else:
            await peer.wait(lambda: peer.closed)
            assert not server.is_connected(IDENT)


@pytest.mark.parametrize("case", ["port", "no-port", "upper-case", "websocket"])
async def test_server_control_message_bytes(case: str) -> None:
    async with ytun_server() as (server, port), go_client(port) as peer:
        server.add_host("bare.test", IDENT)
        host, protocol, local_port, extra = {
            "port": (f"app.test:{port}", 1, port, ""),
            "no-port": ("bare.test", 1, 0, ""),
            "upper-case": (f"APP.Test:{port}", 1, port, ""),
            "websocket": (
                f"app.test:{port}",
                3,
                port,
                "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            ),
        }[case]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            request = f"GET /hello?x=1 HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
            writer.write(request)
            await peer.wait_data(1, control(protocol, local_port))
            # the Go client answers every message by opening the next stream
            peer.send(frame(WINDOW, SYN, 3, 0))
            await peer.wait(lambda: b"\r\n\r\n" in peer.data[3])
            forwarded = bytes(peer.data[3])
            assert forwarded.startswith(b"GET /hello?x=1 HTTP/1.1\r\nHost: " + host.encode())
            assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in forwarded
            assert 3 in peer.acked()
            if case == "websocket":
                peer.data_frame(
                    3,
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\nfrom-local",
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 101 ")
                assert await asyncio.wait_for(reader.readexactly(10), 5) == b"from-local"
                writer.write(b"from-public")
                await peer.wait(lambda: peer.data[3].endswith(b"from-public"))
                # an upgraded connection is half-closed, not ended, by the local side's FIN
                peer.send(frame(WINDOW, FIN, 3, 0))
                assert await asyncio.wait_for(reader.read(), 5) == b""
                assert 3 not in peer.fins
                writer.close()
            else:
                peer.data_frame(
                    3, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Local: yes\r\n\r\nhello"
                )
                status, headers, body, _ = await read_http(reader)
                assert (status, headers["x-local"], body) == (b"HTTP/1.1 200 OK", "yes", b"hello")
            peer.send(frame(WINDOW, FIN, 3, 0))  # as the Go client does when the local side ends
            await peer.wait(lambda: 3 in peer.fins)
        finally:
            writer.close()
        assert peer.opened() == []  # the server never opens a stream


async def test_server_http_stream_per_message_in_order() -> None:
    """Two requests, two messages; each answered by the next odd stream, and each response
    reaches the right public connection."""
    async with ytun_server() as (_, port), go_client(port) as peer:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        try:
            for i, (_, writer) in enumerate(conns):
                writer.write(f"GET /{i} HTTP/1.1\r\nHost: app.test:{port}\r\n\r\n".encode())
                await peer.wait_data(1, control(1, port) * (i + 1))
            for stream_id in (3, 5):
                peer.send(frame(WINDOW, SYN, stream_id, 0))
            await peer.wait(lambda: b"\r\n\r\n" in peer.data[3] and b"\r\n\r\n" in peer.data[5])
            assert peer.data[3].startswith(b"GET /0 ") and peer.data[5].startswith(b"GET /1 ")
            for stream_id, body in ((5, b"one"), (3, b"zero")):
                peer.data_frame(
                    stream_id,
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
                    flags=FIN,
                )
            assert (await read_http(conns[0][0]))[2] == b"zero"
            assert (await read_http(conns[1][0]))[2] == b"one"
        finally:
            for _, writer in conns:
                writer.close()


async def test_server_tcp_tunnel_control_message() -> None:
    async with ytun_server() as (server, port), go_client(port) as peer:
        _, tcp_port = await server.add_addr("127.0.0.1:0", IDENT)
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        try:
            await peer.wait_data(1, control(2, tcp_port))
            peer.send(frame(WINDOW, SYN, 3, 0))
            writer.write(b"ping")
            await peer.wait_data(3, b"ping")
            peer.data_frame(3, b"pong")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"pong"
            writer.write_eof()  # half-close goes through as FIN...
            await peer.wait(lambda: 3 in peer.fins)
            peer.data_frame(3, b"last words", flags=FIN)  # ...and the other way round
            assert await asyncio.wait_for(reader.read(), 5) == b"last words"
        finally:
            writer.close()


@pytest.mark.parametrize("identifier", ["unknown-s3cr3t-7f3a", None])
async def test_server_unknown_identifier(identifier: str | None) -> None:
    async with ytun_server() as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if identifier is None:
                writer.write(
                    f"CONNECT /_controlPath/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "User-Agent: Go-http-client/1.1\r\n\r\n".encode()
                )
            else:
                writer.write(go_connect(f"127.0.0.1:{port}", identifier))
            status, _, body, head = await read_http(reader)
            assert status == b"HTTP/1.1 502 Bad Gateway"
            assert body == b"no host associated for identifier. please use server.AddHost()\n"
            if identifier is not None:
                assert identifier.encode() not in head + body
            # an ordinary HTTP answer: the connection stays usable
            writer.write(b"GET /_controlPath/ HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body, _ = await read_http(reader)
            assert (status, body) == (b"HTTP/1.1 405 Method Not Allowed", b"405 must CONNECT\n\n")
            assert not server.is_connected(identifier or "")
        finally:
            writer.close()


async def test_server_duplicate_identifier_refused_while_first_alive() -> None:
    async with ytun_server(duplicate_ping_timeout=0.5) as (server, port), go_client(port) as first:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(go_connect(f"127.0.0.1:{port}", IDENT))
            status, _, body, _ = await read_http(reader)
            assert status == b"HTTP/1.1 502 Bad Gateway"
            assert body.startswith(b"control conn already exist.")
            assert IDENT.encode() not in body
            assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed
        finally:
            writer.close()
        # the first client answered the server's ping and keeps its tunnel
        assert any(f.type == PING and f.flags == SYN for f in first.frames)
        assert not first.closed and server.is_connected(IDENT)
        public_reader, public_writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            public_writer.write(f"GET / HTTP/1.1\r\nHost: app.test:{port}\r\n\r\n".encode())
            await first.wait_data(1, control(1, port))
            first.send(frame(WINDOW, SYN, 3, 0))
            first.data_frame(3, b"HTTP/1.1 204 No Content\r\n\r\n", flags=FIN)
            head = await asyncio.wait_for(public_reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 204 ")
        finally:
            public_writer.close()


async def test_server_duplicate_identifier_replaces_unresponsive_first() -> None:
    async with ytun_server(duplicate_ping_timeout=0.3) as (server, port):
        first = await go_client_connect(port)
        await go_handshake(first)  # ...and then it stops reading and answering
        try:
            second = await go_client_connect(port)  # the 200 comes after the ping times out
            try:
                await go_handshake(second)
                second.start()
                await second.wait(lambda: server.is_connected(IDENT))
                public_reader, public_writer = await asyncio.open_connection("127.0.0.1", port)
                public_writer.write(f"GET / HTTP/1.1\r\nHost: app.test:{port}\r\n\r\n".encode())
                await second.wait_data(1, control(1, port))
                second.send(frame(WINDOW, SYN, 3, 0))
                second.data_frame(3, b"HTTP/1.1 204 No Content\r\n\r\n", flags=FIN)
                head = await asyncio.wait_for(public_reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 204 ")
                public_writer.close()
            finally:
                await second.aclose()
            # the old session was closed: an unanswered ping, Go Away, then EOF
            first.start()
            await first.wait(lambda: first.closed)
            assert any(f.type == PING and f.flags == SYN for f in first.frames)
            assert first.frames[-1] == Frame(GO_AWAY, 0, 0, 0)
        finally:
            await first.aclose()


# -- (b) a scripted Go server against ytun's Client ------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeKodingServer:
    """Accepts the ytun Client's connection and checks/answers its handshake by hand."""

    async def __aenter__(self) -> FakeKodingServer:
        self._accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._listener = await asyncio.start_server(
            lambda r, w: self._accepted.put_nowait((r, w)), "127.0.0.1", 0
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        self.peers: list[WirePeer] = []
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for peer in self.peers:
            await peer.aclose()
        self._listener.close()
        await self._listener.wait_closed()

    async def accept(self, identifier: str, reply: bytes = CONNECTED) -> WirePeer:
        reader, writer = await asyncio.wait_for(self._accepted.get(), 5)
        peer = WirePeer(reader, writer)
        self.peers.append(peer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head == go_connect(f"127.0.0.1:{self.port}", identifier)
        # nothing more until the reply (the Go server drops what it over-read)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.1)
        writer.write(reply)
        return peer

    async def handshake(self, peer: WirePeer, ok_payload: bytes = b"controlOk") -> None:
        syn = await peer.read_frame()
        assert (syn.type, syn.flags, syn.stream_id) == (WINDOW, SYN, 1)
        hello = await peer.read_frame()
        assert hello == Frame(DATA, 0, 1, 16, b"controlHandshake")  # one frame
        peer.send(frame(WINDOW, ACK, 1, 0), frame(DATA, 0, 1, len(ok_payload), ok_payload))
        peer.start()


@contextlib.asynccontextmanager
async def ytun_client(port: int, identifier: str = IDENT, **kwargs) -> AsyncIterator[Client]:
    kwargs.setdefault("backoff", ExponentialBackoff(max_attempts=0))
    client = Client(f"127.0.0.1:{port}", identifier, **kwargs)
    task = asyncio.ensure_future(client.start())
    try:
        yield client
    finally:
        await client.close(grace=0.2)
        await asyncio.wait_for(task, 5)


@contextlib.asynccontextmanager
async def aiohttp_origin() -> AsyncIterator[str]:
    runner = web.AppRunner(origin_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_client_connect_bytes_and_handshake() -> None:
    async with FakeKodingServer() as fake, ytun_client(fake.port) as client:
        peer = await fake.accept(IDENT)
        await fake.handshake(peer)
        await client.wait_connected(timeout=5)
        assert client.state is ClientState.CONNECTED
        await asyncio.sleep(0.05)
        assert peer.data[1] == b""  # the client writes nothing more on the control stream


async def test_client_rejects_any_other_status_line() -> None:
    changes = []
    async with (
        FakeKodingServer() as fake,
        ytun_client(fake.port, on_state_change=changes.append) as client,
    ):
        peer = await fake.accept(IDENT, reply=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        peer.start()
        await peer.wait(lambda: client.state is ClientState.CLOSED)
        await peer.wait(lambda: peer.closed)
        assert peer.frames == []  # no yamux byte was sent
        assert any("tunnel server error" in str(change.error) for change in changes)


async def test_client_bytes_after_status_line_reach_yamux() -> None:
    async with FakeKodingServer() as fake, ytun_client(fake.port) as client:
        peer = await fake.accept(IDENT, reply=CONNECTED + frame(PING, SYN, 0, 77))
        got = [await peer.read_frame() for _ in range(3)]
        assert Frame(PING, ACK, 0, 77) in got
        assert Frame(DATA, 0, 1, 16, b"controlHandshake") in got
        peer.send(frame(WINDOW, ACK, 1, 0), frame(DATA, 0, 1, 9, b"controlOk"))
        await client.wait_connected(timeout=5)


async def test_client_opens_one_stream_per_message_in_order() -> None:
    messages = [
        control(1, 0),
        control(1, 80),
        control(3, 0),
        b'{"localPort":0,"TransportProtocol":1,"ACTION":1,"unknown":[1,2]}\n',
        control(1, 8080),
        control(3, 8080),
    ]
    async with (
        aiohttp_origin() as origin,
        FakeKodingServer() as fake,
        ytun_client(fake.port, local_addr=origin) as client,
    ):
        peer = await fake.accept(IDENT)
        # controlOk and the first message in one frame, as a Go server may send them
        await fake.handshake(peer, ok_payload=b"controlOk" + messages[0])
        await client.wait_connected(timeout=5)
        await peer.wait(lambda: peer.opened() == [3])
        # one message split across frames, then three packed in one frame, then the last
        # split inside a multi-byte position (mid-key)
        peer.data_frame(1, messages[1][:7])
        peer.data_frame(1, messages[1][7:])
        peer.data_frame(1, b"".join(messages[2:5]))
        peer.data_frame(1, messages[5][:20])
        await asyncio.sleep(0.05)
        peer.data_frame(1, messages[5][20:])
        await peer.wait(lambda: len(peer.opened()) == 6)
        assert peer.opened() == [3, 5, 7, 9, 11, 13]
        for stream_id in peer.opened():
            peer.send(frame(WINDOW, ACK, stream_id, 0))
        # each stream is a raw pipe to the local service
        for stream_id in (3, 13):
            peer.data_frame(
                stream_id,
                b"GET /?echo=via-%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % stream_id,
            )
        for stream_id in (3, 13):
            await peer.wait(lambda stream_id=stream_id: stream_id in peer.fins)
            answer = bytes(peer.data[stream_id])
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert answer.endswith(b"\r\n\r\nvia-%d" % stream_id)
        await asyncio.sleep(0.05)
        assert len(peer.opened()) == 6  # exactly one stream per message
        assert client.state is ClientState.CONNECTED


async def test_client_unknown_protocol_gets_a_closed_stream() -> None:
    async with (
        aiohttp_origin() as origin,
        FakeKodingServer() as fake,
        ytun_client(fake.port, local_addr=origin) as client,
    ):
        peer = await fake.accept(IDENT)
        await fake.handshake(peer)
        await client.wait_connected(timeout=5)
        peer.data_frame(1, b'{"action":1,"transportProtocol":9,"localPort":0}\n')
        await peer.wait(lambda: peer.opened() == [3])
        peer.send(frame(WINDOW, ACK, 3, 0))
        await peer.wait(lambda: 3 in peer.fins)
        assert peer.data[3] == b""
        # the client lives on and serves the next message
        peer.data_frame(1, control(1, 0))
        await peer.wait(lambda: peer.opened() == [3, 5])
        assert client.state is ClientState.CONNECTED and not peer.closed


async def test_client_local_service_down() -> None:
    down = free_port()
    async with FakeKodingServer() as fake, ytun_client(fake.port, dial_timeout=2) as client:
        peer = await fake.accept(IDENT)
        await fake.handshake(peer)
        await client.wait_connected(timeout=5)
        # no local_addr: HTTP goes to 127.0.0.1:<localPort>, TCP too
        peer.data_frame(1, control(1, down) + control(2, down))
        await peer.wait(lambda: peer.opened() == [3, 5])
        peer.send(frame(WINDOW, ACK, 3, 0), frame(WINDOW, ACK, 5, 0))
        await peer.wait(lambda: {3, 5} <= peer.fins)
        assert bytes(peer.data[3]) == NO_LOCAL_SERVER  # exactly, then FIN
        assert bytes(peer.data[5]) == b""  # TCP: just closed
        peer.send(frame(WINDOW, FIN, 3, 0), frame(WINDOW, FIN, 5, 0))
        assert client.state is ClientState.CONNECTED


async def test_client_non_object_control_value_ends_session() -> None:
    """A control stream value that is not a JSON object ends the session, as in Go."""
    async with FakeKodingServer() as fake, ytun_client(fake.port) as client:
        peer = await fake.accept(IDENT)
        await fake.handshake(peer)
        await client.wait_connected(timeout=5)
        peer.data_frame(1, json.dumps([1, 2]).encode() + b"\n")
        await peer.wait(lambda: peer.closed)
        assert client.state in (
            ClientState.DISCONNECTED,
            ClientState.CONNECTING,
            ClientState.CLOSED,
        )
        assert peer.opened() == []
