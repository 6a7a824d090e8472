"""The command line, run for real: ``python -m ytun server | client | demo`` as
subprocesses on loopback, driven with curl and plain sockets."""

from __future__ import annotations

import http.server
import os
import pathlib
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import ytun

SECRET = "S3CRET-cli-identifier"
STARTUP = 15  # seconds for a subprocess to get ready (imports included)
STOP = 5  # seconds a signalled process may take to exit
CURL = shutil.which("curl")

# The subprocesses import the same ytun as this test run.
ENV = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(
        filter(
            None,
            [
                str(pathlib.Path(ytun.__file__).resolve().parent.parent),
                os.environ.get("PYTHONPATH"),
            ],
        )
    ),
    PYTHONUNBUFFERED="1",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Ytun:
    """One ``python -m ytun ...`` subprocess; its output is collected line by line."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ytun", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(
                target=self._read, args=(self.process.stdout, self.stdout), daemon=True
            ),
            threading.Thread(
                target=self._read, args=(self.process.stderr, self.stderr), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe, lines: list[str]) -> None:
        for line in pipe:
            with self._changed:
                lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, lines: list[str], text: str, timeout: float = STARTUP) -> str:
        """The first line containing ``text`` (fails if the process exits first)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in lines:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.process.poll() is not None and not any(r.is_alive() for r in self._readers)
                ):
                    raise AssertionError(
                        f"{text!r} not seen from ytun {' '.join(self.args)} "
                        f"(exit {self.process.poll()}):\n{self.output()}"
                    )
                self._changed.wait(min(remaining, 0.1))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP) -> tuple[int, float]:
        """Send ``sig``; return the exit status and how long the exit took."""
        started = time.monotonic()
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.finish()
        return code, time.monotonic() - started

    def finish(self, timeout: float = STOP) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP)
        for pipe in (self.process.stdout, self.process.stderr):
            pipe.close()

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)


@pytest.fixture
def ytun_cli() -> Iterator[Callable[..., Ytun]]:
    """Start ytun subprocesses; every one is killed at the end of the test."""
    started: list[Ytun] = []

    def start(*args: str) -> Ytun:
        process = Ytun(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


class _OriginHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"origin says {self.path} to {self.headers.get('Host')}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _EchoHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(b"echo: " + line)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True


@pytest.fixture
def origin() -> Iterator[int]:
    """A local HTTP service on 127.0.0.1; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OriginHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def tcp_echo() -> Iterator[int]:
    """A local line-echo TCP service on 127.0.0.1; yields its port."""
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def curl(url: str, host: str) -> str:
    if CURL is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(
        [CURL, "-s", "--noproxy", "*", "--max-time", "10", "-H", f"Host: {host}", url],
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 0, result
    return result.stdout.decode()


def start_pair(
    ytun_cli, port: int, *client_args: str, server_args: tuple[str, ...] = ()
) -> tuple[Ytun, Ytun]:
    server = ytun_cli(
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--host",
        f"app.test:{port}={SECRET}",
        *server_args,
    )
    server.wait_for(server.stdout, f"ytun server listening on http://127.0.0.1:{port}")
    client = ytun_cli(
        "client", "--server", f"127.0.0.1:{port}", "--identifier", SECRET, *client_args
    )
    client.wait_for(client.stderr, "tunnel connected")
    server.wait_for(server.stderr, "client for app.test")
    return server, client


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# -- server + client --------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_http_through_server_and_client(ytun_cli, origin, sig):
    if CURL is None:
        pytest.skip("curl is not installed")
    port = free_port()
    server, client = start_pair(ytun_cli, port, "--local", f"127.0.0.1:{origin}")
    body = curl(f"http://127.0.0.1:{port}/hello?x=1", f"app.test:{port}")
    assert body == f"origin says /hello?x=1 to app.test:{port}"
    access = server.wait_for(server.stderr, '"GET /hello?x=1" 200')
    assert "ytun.access" in access
    # An unknown host is answered by the server itself.
    assert curl(f"http://127.0.0.1:{port}/", "nobody.test").startswith(
        'no virtual host available for "nobody.test"'
    )

    code, took = client.stop(sig)
    assert (code, took < STOP) == (0, True)
    server.wait_for(server.stderr, "disconnected")
    code, took = server.stop(sig)
    assert (code, took < STOP) == (0, True)
    assert server.stdout[0].startswith(f"ytun server listening on http://127.0.0.1:{port}")
    for process in (server, client):
        assert SECRET not in process.output()


def test_client_without_local_uses_the_public_host_port(ytun_cli, origin):
    """No --local: HTTP goes to 127.0.0.1:<port of the public Host>."""
    if CURL is None:
        pytest.skip("curl is not installed")
    other = free_port()
    server = ytun_cli(
        "server", "--listen", f"127.0.0.1:{other}", "--host", f"app.test:{origin}={SECRET}"
    )
    server.wait_for(server.stdout, "ytun server listening on")
    client = ytun_cli("client", "--server", f"127.0.0.1:{other}", "--identifier", SECRET)
    client.wait_for(client.stderr, "tunnel connected")
    server.wait_for(server.stderr, "client for app.test")
    assert curl(f"http://127.0.0.1:{other}/y", f"app.test:{origin}") == (
        f"origin says /y to app.test:{origin}"
    )


def test_tcp_flags_tunnel_a_tcp_echo(ytun_cli, tcp_echo):
    port, tcp_port = free_port(), free_port()
    server, _ = start_pair(
        ytun_cli,
        port,
        "--tcp-local",
        f"{tcp_port}=127.0.0.1:{tcp_echo}",
        server_args=("--tcp", f"127.0.0.1:{tcp_port}={SECRET}"),
    )
    server.wait_for(server.stderr, f"tunnelling TCP on 127.0.0.1:{tcp_port}")
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as conn:
        reader = conn.makefile("rb")
        for line in (b"first line\n", b"second line\n"):
            conn.sendall(line)
            assert reader.readline() == b"echo: " + line
        conn.shutdown(socket.SHUT_WR)  # half-close travels through: the echo ends
        assert reader.read() == b""
    assert SECRET not in server.output()


def test_client_stops_promptly_while_it_cannot_reach_the_server(ytun_cli):
    port = free_port()
    client = ytun_cli("client", "--server", f"127.0.0.1:{port}", "--identifier", SECRET)
    client.wait_for(client.stderr, f"cannot reach the server at 127.0.0.1:{port}")
    client.wait_for(client.stderr, "; retrying in ")
    code, took = client.stop(signal.SIGTERM)
    assert (code, took < STOP) == (0, True)
    assert SECRET not in client.output()


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("server", "--listen", "127.0.0.1:{port}", "--host", "bad"),
        ("server", "--listen", "127.0.0.1:{port}", "--host", "a.test=ID", "--tcp", "nonsense"),
        ("server", "--listen", "no-port", "--host", "a.test=ID"),
        (
            "client",
            "--server",
            "127.0.0.1:{port}",
            "--identifier",
            "ID",
            "--tcp-local",
            "x=127.0.0.1:1",
        ),
        (
            "client",
            "--server",
            "127.0.0.1:{port}",
            "--identifier",
            "ID",
            "--tcp-local",
            "7000=no-port",
        ),
        ("client", "--server", "127.0.0.1", "--identifier", "ID"),
    ],
    ids=["host", "tcp", "listen", "tcp-local-port", "tcp-local-addr", "server"],
)
def test_bad_flags_exit_2_with_one_line(ytun_cli, args):
    port = free_port()
    process = ytun_cli(*(arg.format(port=port) for arg in args))
    assert process.finish(STARTUP) == 2
    line = one_line("".join(process.stderr))
    assert line.startswith(f"ytun {args[0]}: ")
    assert "Traceback" not in process.output()
    assert process.stdout == []


def test_missing_required_flag_is_a_usage_error(ytun_cli):
    process = ytun_cli("client", "--server", "127.0.0.1:1")
    assert process.finish(STARTUP) == 2
    assert "--identifier" in process.stderr[-1]


@pytest.mark.parametrize("command", ["server", "demo"])
def test_busy_port_exits_with_one_line(ytun_cli, command):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        if command == "server":
            process = ytun_cli(
                "server", "--listen", f"127.0.0.1:{port}", "--host", f"a.test={SECRET}"
            )
        else:
            process = ytun_cli("demo", "--port", str(port))
        code = process.finish(STARTUP)
    assert code != 0
    line = one_line("".join(process.stderr))
    assert line.startswith(f"ytun {command}: ")
    assert "in use" in line
    assert SECRET not in process.output()


# -- demo --------------------------------------------------------------------------------


def test_demo_serves_its_page(ytun_cli):
    if CURL is None:
        pytest.skip("curl is not installed")
    port = free_port()
    demo = ytun_cli("demo", "--port", str(port))
    demo.wait_for(demo.stdout, f"http://demo.localhost:{port}/")
    page = curl(f"http://127.0.0.1:{port}/", f"demo.localhost:{port}")
    assert "Hello through the tunnel" in page
    assert f"demo.localhost:{port}" in page
    assert "Request number 1 " in page
    assert "Request number 2 " in curl(f"http://127.0.0.1:{port}/", "demo.localhost")
    code, took = demo.stop(signal.SIGINT)
    assert (code, took < STOP) == (0, True)
