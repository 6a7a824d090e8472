"""Wire compatibility with hashicorp/yamux: ytun against the Go reference peer.

The peer (tests/interop/yamux_peer) is built once per run from Debian's packaged
hashicorp/yamux sources. Without Go or those sources the tests skip; with both present
a build failure is an error. See tests/interop/README.md for the peer's stdout protocol
and echo rule.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import pytest

from ytun.yamux import Session, StreamConnection, open_connection

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

INTEROP_DIR = Path(__file__).parent / "interop"
YAMUX_SOURCES = Path("/usr/share/gocode/src/github.com/hashicorp/yamux")
RESET_MAGIC = b"RESET"
CLIENT_CHECKS = ("ping", "concurrent100", "big10mib", "halfclose", "reset", "afterreset")
STEP_TIMEOUT = 20.0  # any single wait on the Go peer


@pytest.fixture(scope="module")
def yamux_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go reference peer, built once for this module."""
    if shutil.which("go") is None:
        pytest.skip("interop tests need Go: 'go' is not on PATH (apt-get install golang-go)")
    if not (YAMUX_SOURCES / "session.go").is_file():
        pytest.skip(
            f"interop tests need the hashicorp/yamux sources in {YAMUX_SOURCES} "
            "(apt-get install golang-github-hashicorp-yamux-dev)"
        )
    binary = tmp_path_factory.mktemp("interop") / "yamux_peer"
    try:
        result = subprocess.run(
            ["sh", str(INTEROP_DIR / "build.sh"), str(binary)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"building the Go yamux peer timed out:\n{exc.stderr}", pytrace=False)
    if result.returncode != 0 or not binary.is_file():
        pytest.fail(
            f"building the Go yamux peer failed (exit status {result.returncode}):\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return binary


class GoPeer:
    """The Go peer as a subprocess; its stdout lines are collected as they arrive."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._stderr = bytearray()
        self._new_line = asyncio.Event()
        self._stdout_closed = False
        self._pumps = [
            asyncio.ensure_future(self._read_stdout()),
            asyncio.ensure_future(self._read_stderr()),
        ]

    @classmethod
    async def start(cls, binary: Path, *args: str) -> GoPeer:
        process = await asyncio.create_subprocess_exec(
            str(binary),
            *args,
            "-timeout",
            "60s",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                self.lines.append(line.decode().rstrip("\n"))
                self._new_line.set()
        finally:
            self._stdout_closed = True
            self._new_line.set()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self._stderr += chunk

    def output(self) -> str:
        """Everything the peer printed, for failure messages."""
        stdout = "\n".join(self.lines)
        stderr = self._stderr.decode(errors="replace")
        return f"--- Go peer stdout ---\n{stdout}\n--- Go peer stderr ---\n{stderr}"

    async def line(self, predicate: Callable[[str], bool], timeout: float = STEP_TIMEOUT) -> str:
        """The first stdout line matching ``predicate``, waiting for it if need be."""

        async def wait() -> str:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if self._stdout_closed:
                    raise AssertionError("the Go peer closed its stdout")
                self._new_line.clear()
                await self._new_line.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except (asyncio.TimeoutError, AssertionError):
            raise AssertionError(f"expected line not printed\n{self.output()}") from None

    async def wait(self, timeout: float = STEP_TIMEOUT) -> int:
        """The exit status, once the peer has exited and its output is read."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"the Go peer did not exit\n{self.output()}") from None
        await asyncio.gather(*self._pumps)
        return self.process.returncode  # type: ignore[return-value]

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)


# -- (A) Go client, ytun server ----------------------------------------------------------


class EchoStats:
    def __init__(self) -> None:
        self.streams = 0
        self.resets = 0
        self.echoed = 0
        self.lost: list[BaseException | None] = []


class EchoProtocol(asyncio.Protocol):
    """The README's echo rule on a ytun stream: echo everything and close on EOF, unless
    the stream starts with ``RESET``, which is answered by resetting the stream."""

    def __init__(self, stats: EchoStats) -> None:
        self.stats = stats
        self.head = b""
        self.echoing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.stats.streams += 1

    def data_received(self, data: bytes) -> None:
        if not self.echoing:
            # Hold the first bytes until they can no longer become the magic.
            self.head += data
            if len(self.head) < len(RESET_MAGIC) and RESET_MAGIC.startswith(self.head):
                return
            if self.head.startswith(RESET_MAGIC):
                self.stats.resets += 1
                self.transport.reset()  # type: ignore[attr-defined]
                return
            data, self.head, self.echoing = self.head, b"", True
        self.stats.echoed += len(data)
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        if self.head:  # a stream shorter than the magic
            self.stats.echoed += len(self.head)
            self.transport.write(self.head)  # type: ignore[attr-defined]
        self.transport.close()
        return True

    # Backpressure: stop reading while the peer is not taking our echo.
    def pause_writing(self) -> None:
        self.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.lost.append(exc)


async def test_go_client_against_ytun_server(codec, yamux_peer):
    loop = asyncio.get_running_loop()
    stats = EchoStats()
    sessions: list[Session] = []

    def session_factory() -> Session:
        session = Session(client=False, protocol_factory=lambda: EchoProtocol(stats), codec=codec)
        sessions.append(session)
        return session

    server = await loop.create_server(session_factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    peer = await GoPeer.start(yamux_peer, "-mode", "client", "-connect", f"127.0.0.1:{port}")
    try:
        status = await peer.wait(timeout=40)
        output = peer.output()
        assert status == 0, output
        for check in CLIENT_CHECKS:
            assert f"PASS {check}" in peer.lines, output
        assert not [line for line in peer.lines if line.startswith("FAIL")], output
        assert peer.lines[-1] == "DONE", output

        # The Go client closed its session; ours follows.
        assert len(sessions) == 1
        await asyncio.wait_for(sessions[0].wait_closed(), STEP_TIMEOUT)
        # 100 + big + half-close + reset + after-reset, the one reset among them.
        assert stats.streams == 104 and stats.resets == 1, vars(stats)
        expected = 100 * 64 * 1024 + (10 << 20) + len(b"hello") + len(b"still alive after reset")
        assert stats.echoed == expected
    finally:
        await peer.kill()
        for session in sessions:
            session.abort()
        server.close()
        await server.wait_closed()


# -- (B) ytun client, Go server ----------------------------------------------------------


@asynccontextmanager
async def go_server(binary: Path, codec: ModuleType) -> AsyncIterator[tuple[GoPeer, Session]]:
    """A ytun client session on the Go peer in server mode. On a clean exit the session is
    closed and the peer must report SESSION-CLOSED and exit with status 0."""
    peer = await GoPeer.start(binary, "-mode", "server", "-listen", "127.0.0.1:0")
    session: Session | None = None
    try:
        listen = await peer.line(lambda line: line.startswith("LISTEN "))
        host, port = listen.split()[1].rsplit(":", 1)
        _, session = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(
                lambda: Session(client=True, codec=codec), host, int(port)
            ),
            STEP_TIMEOUT,
        )
        yield peer, session
        session.close()
        await peer.line(lambda line: line == "SESSION-CLOSED")
        assert await peer.wait() == 0, peer.output()
        assert peer.lines[-1] == "SESSION-CLOSED", peer.output()
    except BaseException:
        print(peer.output())  # shown with the failure
        raise
    finally:
        if session is not None:
            session.abort()
        await peer.kill()


def echo_done(peer: GoPeer) -> dict[int, int]:
    """Stream ID to byte count of every ``ECHO-DONE`` line so far."""
    done = {}
    for line in peer.lines:
        if line.startswith("ECHO-DONE "):
            _, stream_id, count = line.split()
            done[int(stream_id)] = int(count)
    return done


async def read_to_eof(conn: StreamConnection) -> bytes:
    """Everything until the peer's FIN, read in blocks."""
    parts = []
    while chunk := await asyncio.wait_for(conn.read(65536), STEP_TIMEOUT):
        parts.append(chunk)
    return b"".join(parts)


async def echo_round_trip(session: Session, payload: bytes) -> StreamConnection:
    """Send ``payload``, half-close, and check the echo and the peer's FIN."""
    conn = await open_connection(session)
    conn.write(payload)
    await conn.drain()
    conn.write_eof()
    echo = await read_to_eof(conn)
    assert len(echo) == len(payload), (
        f"stream {conn.stream_id}: {len(echo)} of {len(payload)} bytes echoed before FIN"
    )
    assert echo == payload, f"stream {conn.stream_id}: the echo differs"
    await asyncio.wait_for(conn.wait_closed(), STEP_TIMEOUT)
    return conn


async def test_concurrent_streams_against_go_server(codec, yamux_peer):
    size = 64 * 1024
    async with go_server(yamux_peer, codec) as (peer, session):
        payloads = [b"data" + random.Random(i).randbytes(size - 4) for i in range(100)]
        conns = await asyncio.gather(*(echo_round_trip(session, p) for p in payloads))
        ids = [conn.stream_id for conn in conns]
        assert len(set(ids)) == 100 and all(stream_id % 2 == 1 for stream_id in ids)
        assert session.stream_count == 0
    assert echo_done(peer) == dict.fromkeys(ids, size)
    assert not [line for line in peer.lines if line.startswith("STREAM-RESET")]


async def test_ten_mib_each_way_against_go_server(codec, yamux_peer):
    size, block = 10 << 20, 256 * 1024
    data = b"data" + random.Random(0xB16).randbytes(size - 4)
    async with go_server(yamux_peer, codec) as (peer, session):
        conn = await open_connection(session)

        async def send() -> None:
            for offset in range(0, size, block):
                conn.write(data[offset : offset + block])
                await conn.drain()
            conn.write_eof()

        async def receive() -> tuple[int, str]:
            digest, count = hashlib.sha256(), 0
            while chunk := await conn.read(block):
                digest.update(chunk)
                count += len(chunk)
            return count, digest.hexdigest()

        _, (count, digest) = await asyncio.wait_for(asyncio.gather(send(), receive()), STEP_TIMEOUT)
        assert count == size
        assert digest == hashlib.sha256(data).hexdigest()
        await asyncio.wait_for(conn.wait_closed(), STEP_TIMEOUT)
    assert echo_done(peer) == {conn.stream_id: size}


async def test_half_close_against_go_server(codec, yamux_peer):
    payload = b"half-closed: the peer still sends after our FIN"
    async with go_server(yamux_peer, codec) as (peer, session):
        conn = await open_connection(session)
        conn.write(payload)
        conn.write_eof()
        # Our side is closed for writing; the echo still arrives, then the peer's FIN.
        assert await read_to_eof(conn) == payload
        await asyncio.wait_for(conn.wait_closed(), STEP_TIMEOUT)
        assert session.stream_count == 0
    assert echo_done(peer) == {conn.stream_id: len(payload)}


async def test_reset_mid_transfer_against_go_server(codec, yamux_peer):
    async with go_server(yamux_peer, codec) as (peer, session):
        conn = await open_connection(session)
        conn.write(b"data" + bytes(512 * 1024))  # more than one window: the echo is running
        await asyncio.wait_for(conn.readexactly(4096), STEP_TIMEOUT)
        conn.reset()
        stream_id = conn.stream_id
        await peer.line(lambda line: line == f"STREAM-RESET {stream_id}")
        await asyncio.wait_for(conn.wait_closed(), STEP_TIMEOUT)
        assert session.stream_count == 0
        # The session survives the reset.
        after = await echo_round_trip(session, b"still alive after reset")
    assert echo_done(peer) == {after.stream_id: len(b"still alive after reset")}


async def test_ping_against_go_server(codec, yamux_peer):
    async with go_server(yamux_peer, codec) as (_, session):
        for _ in range(3):
            rtt = await session.ping()
            assert isinstance(rtt, float)
            assert 0 < rtt < STEP_TIMEOUT
