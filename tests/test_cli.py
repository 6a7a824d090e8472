"""The command line, run for real: ``python -m ytun server | client | demo`` as
subprocesses on loopback, driven with curl and plain sockets."""

from __future__ import annotations

import argparse
import http.server
import os
import pathlib
import re
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
from ytun import cli
from ytun.cli import build_parser, is_loopback
from ytun.settings import UsageError, load_server_file

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

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ytun", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(ENV, **(env or {})),
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
        return self.wait_for_count(lines, text, 1, timeout)[0]

    def wait_for_count(
        self, lines: list[str], text: str, count: int, timeout: float = STARTUP
    ) -> list[str]:
        """The first ``count`` lines containing ``text`` (fails if the process exits first)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in lines if text in line]
                if len(found) >= count:
                    return found[:count]
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

    def start(*args: str, env: dict[str, str] | None = None) -> Ytun:
        process = Ytun(*args, env=env)
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
    access = server.wait_for(server.stdout, '"GET /hello?x=1" 200')
    assert f" 127.0.0.1 app.test:{port} " in access  # the default access log is stdout
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


# -- secrets off the command line ---------------------------------------------------------


def write_file(path: pathlib.Path, text: str) -> pathlib.Path:
    """Write ``text`` to ``path`` at once (a reloading server never reads half a file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def start_server(ytun_cli, port: int, *args: str) -> Ytun:
    server = ytun_cli("server", "--listen", f"127.0.0.1:{port}", *args)
    server.wait_for(server.stdout, f"ytun server listening on http://127.0.0.1:{port}")
    return server


def start_client(ytun_cli, port: int, *args: str, env: dict[str, str] | None = None) -> Ytun:
    client = ytun_cli("client", "--server", f"127.0.0.1:{port}", *args, env=env)
    client.wait_for(client.stderr, "tunnel connected")
    return client


def test_client_takes_the_identifier_from_the_environment(ytun_cli, origin):
    port = free_port()
    server = start_server(ytun_cli, port, "--host", f"app.test:{port}={SECRET}")
    client = start_client(
        ytun_cli, port, "--local", f"127.0.0.1:{origin}", env={"YTUN_IDENTIFIER": SECRET}
    )
    server.wait_for(server.stderr, "client for app.test")
    assert curl(f"http://127.0.0.1:{port}/env", f"app.test:{port}") == (
        f"origin says /env to app.test:{port}"
    )
    assert SECRET not in client.output()
    assert "cleartext" not in client.output()  # loopback: nothing crosses a network


def test_an_identifier_file_beats_the_environment(ytun_cli, origin, tmp_path):
    port = free_port()
    identifier_file = write_file(tmp_path / "app.id", f"{SECRET}\n")
    start_server(ytun_cli, port, "--host", f"app.test:{port}={SECRET}")
    client = start_client(
        ytun_cli,
        port,
        "--identifier-file",
        str(identifier_file),
        "--local",
        f"127.0.0.1:{origin}",
        env={"YTUN_IDENTIFIER": "wrong-identifier"},
    )
    assert curl(f"http://127.0.0.1:{port}/f", f"app.test:{port}") == (
        f"origin says /f to app.test:{port}"
    )
    assert SECRET not in client.output()


def test_server_hosts_from_identifier_files_in_the_config(ytun_cli, origin, tmp_path):
    port = free_port()
    write_file(tmp_path / "app.id", f"{SECRET}\n")
    config = write_file(
        tmp_path / "server.toml",
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[server.hosts]\n"app.test:{port}" = {{ identifier_file = "app.id" }}\n',
    )
    server = ytun_cli("server", "--config", str(config))
    server.wait_for(server.stdout, f"ytun server listening on http://127.0.0.1:{port}")
    client_config = write_file(
        tmp_path / "client.toml",
        f'[client]\nserver = "127.0.0.1:{port}"\nidentifier_file = "app.id"\n'
        f'local = "127.0.0.1:{origin}"\n',
    )
    client = ytun_cli("client", "--config", str(client_config))
    client.wait_for(client.stderr, "tunnel connected")
    assert curl(f"http://127.0.0.1:{port}/c", f"app.test:{port}") == (
        f"origin says /c to app.test:{port}"
    )
    for process in (server, client):
        assert SECRET not in process.output()


def test_flags_override_the_config_file(ytun_cli, tmp_path):
    file_port, flag_port = free_port(), free_port()
    config = write_file(
        tmp_path / "server.toml",
        f'[server]\nlisten = "127.0.0.1:{file_port}"\nlog_level = "error"\n'
        f'[server.hosts]\n"a.test" = "{SECRET}"\n',
    )
    server = ytun_cli(
        "server",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{flag_port}",
        "--log-level",
        "debug",
    )
    server.wait_for(server.stdout, f"ytun server listening on http://127.0.0.1:{flag_port}")
    with socket.create_connection(("127.0.0.1", flag_port), timeout=10):
        pass
    with pytest.raises(ConnectionRefusedError), socket.socket() as sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", file_port))


@pytest.mark.parametrize(
    ("server_address", "warned"),
    [
        # Linux delivers connections to 0.0.0.0 locally: a non-loopback address whose
        # dial stays on this machine.
        ("0.0.0.0:{port}", True),
        ("127.0.0.1:{port}", False),
        ("localhost:{port}", False),
    ],
)
def test_cleartext_to_a_non_loopback_server_is_warned_once(ytun_cli, server_address, warned):
    port = free_port()
    client = ytun_cli(
        "client", "--server", server_address.format(port=port), env={"YTUN_IDENTIFIER": SECRET}
    )
    client.wait_for_count(client.stderr, "cannot reach the server", 2)  # a retry happened
    client.stop()
    warnings = [line for line in client.stderr if "cleartext" in line]
    if warned:
        assert len(warnings) == 1
        assert "the identifier crosses the network in cleartext" in warnings[0]
        assert "use --tls" in warnings[0]
    else:
        assert warnings == []
    assert SECRET not in client.output()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("app.localhost", True),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("tunnel.example.com", False),
    ],
)
def test_which_server_addresses_are_loopback(host, expected):
    assert is_loopback(host) is expected


def test_identifier_flags_say_they_are_visible_to_other_users(ytun_cli):
    flags = (
        ("server", "--host HOST=IDENTIFIER"),
        ("server", "--tcp ADDR=IDENTIFIER"),
        ("client", "--identifier IDENTIFIER"),
    )
    for command, flag in flags:
        process = ytun_cli(command, "--help")
        assert process.finish(STARTUP) == 0
        text = " ".join("".join(process.stdout).split())
        described = text[text.rindex(flag) :].split(" --")[0]  # the last mention: its help
        assert "visible to every user of this machine" in described


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--identifier-file", "{tmp}/missing.id"), "{tmp}/missing.id"),
        (("--identifier-file", "{tmp}"), "{tmp}"),
    ],
    ids=["missing", "directory"],
)
def test_an_unreadable_identifier_file_is_named(ytun_cli, tmp_path, args, named):
    process = ytun_cli(
        "client", "--server", "127.0.0.1:1", *(arg.format(tmp=tmp_path) for arg in args)
    )
    assert process.finish(STARTUP) == 2
    line = one_line("".join(process.stderr))
    assert line.startswith("ytun client: cannot read --identifier-file ")
    assert named.format(tmp=tmp_path) in line


# -- the config file: errors and reloads --------------------------------------------------


@pytest.mark.parametrize(
    ("command", "text", "named"),
    [
        ("server", '[server]\nlisen = ":1"\n', "unknown key 'server.lisen'"),
        ("server", "[server]\nidle_timeout = true\n", "server.idle_timeout must be a number"),
        ("server", "[server\n", "not valid TOML"),
        ("client", '[client]\nserver = "127.0.0.1:1"\nidentifer = "x"\n', "client.identifer"),
        ("client", '[server]\nlisten = ":1"\n', "no [client] table"),
    ],
    ids=["unknown-key", "wrong-type", "syntax", "client-key", "no-table"],
)
def test_config_errors_exit_2_naming_the_file_and_the_key(ytun_cli, tmp_path, command, text, named):
    config = write_file(tmp_path / "ytun.toml", text)
    process = ytun_cli(command, "--config", str(config))
    assert process.finish(STARTUP) == 2
    line = one_line("".join(process.stderr))
    assert line.startswith(f"ytun {command}: {config}")
    assert named in line
    assert "Traceback" not in process.output()


def reload_config(port: int, hosts: list[str], tcp: dict[int, int] | None = None) -> str:
    lines = [f'[server]\nlisten = "127.0.0.1:{port}"\n[server.hosts]']
    lines += [f'"{host}" = {{ identifier_file = "app.id" }}' for host in hosts]
    if tcp:
        lines.append("[server.tcp]")
        lines += [f'"127.0.0.1:{public}" = {{ identifier_file = "app.id" }}' for public in tcp]
    return "\n".join(lines) + "\n"


def curl_status(url: str, host: str) -> tuple[str, str]:
    """The status code and the body."""
    if CURL is None:
        pytest.skip("curl is not installed")
    result = subprocess.run(
        [
            CURL,
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            "-H",
            f"Host: {host}",
            "-w",
            "\n%{http_code}",
            url,
        ],
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 0, result
    body, _, status = result.stdout.decode().rpartition("\n")
    return status, body


def test_sighup_reloads_hosts_and_tcp_routes_keeping_the_client(
    ytun_cli, origin, tcp_echo, tmp_path
):
    port, tcp_port = free_port(), free_port()
    write_file(tmp_path / "app.id", SECRET)
    config = write_file(
        tmp_path / "server.toml", reload_config(port, [f"app.test:{port}", "old.test"])
    )
    server = ytun_cli("server", "--config", str(config))
    server.wait_for(server.stdout, f"ytun server listening on http://127.0.0.1:{port}")
    client = start_client(
        ytun_cli,
        port,
        "--local",
        f"127.0.0.1:{origin}",
        "--tcp-local",
        f"{tcp_port}=127.0.0.1:{tcp_echo}",
        env={"YTUN_IDENTIFIER": SECRET},
    )
    assert curl_status(f"http://127.0.0.1:{port}/o", "old.test") == (
        "200",
        "origin says /o to old.test",
    )

    write_file(config, reload_config(port, [f"app.test:{port}", "new.test"], {tcp_port: 0}))
    server.process.send_signal(signal.SIGHUP)
    line = server.wait_for(server.stderr, "reloaded")
    assert "+host new.test" in line and "-host old.test" in line
    assert f"+tcp 127.0.0.1:{tcp_port}" in line

    assert curl_status(f"http://127.0.0.1:{port}/n", "new.test") == (
        "200",
        "origin says /n to new.test",
    )
    status, body = curl_status(f"http://127.0.0.1:{port}/o", "old.test")
    assert status == "502"
    assert body.startswith('no virtual host available for "old.test"')
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as conn:
        conn.sendall(b"through a reloaded route\n")
        assert conn.makefile("rb").readline() == b"echo: through a reloaded route\n"
    # The same client served before and after: it never reconnected.
    assert len([line for line in server.stderr if "connected from" in line]) == 1
    assert not any("disconnected" in line for line in server.stderr + client.stderr)
    assert len([line for line in client.stderr if "tunnel connected" in line]) == 1

    write_file(config, reload_config(port, [f"app.test:{port}"]))
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_count(server.stderr, "reloaded", 2)
    with pytest.raises(ConnectionRefusedError), socket.socket() as sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", tcp_port))
    assert SECRET not in server.output()


def test_a_config_that_fails_on_reload_keeps_the_running_one(ytun_cli, origin, tmp_path):
    port = free_port()
    write_file(tmp_path / "app.id", SECRET)
    config = write_file(tmp_path / "server.toml", reload_config(port, [f"app.test:{port}"]))
    server = ytun_cli("server", "--config", str(config))
    server.wait_for(server.stdout, "ytun server listening on")
    start_client(ytun_cli, port, "--local", f"127.0.0.1:{origin}", env={"YTUN_IDENTIFIER": SECRET})

    write_file(config, '[server]\nhosts = "not a table"\n')
    server.process.send_signal(signal.SIGHUP)
    line = server.wait_for(server.stderr, "reload failed")
    assert "the running configuration stays" in line
    assert f"{config}: server.hosts must be a table" in line
    assert curl_status(f"http://127.0.0.1:{port}/still", f"app.test:{port}") == (
        "200",
        f"origin says /still to app.test:{port}",
    )
    assert server.process.poll() is None


# -- TCP-only clients ---------------------------------------------------------------------


def test_a_tcp_route_without_any_host_is_accepted(ytun_cli, tcp_echo):
    port, tcp_port = free_port(), free_port()
    server = start_server(ytun_cli, port, "--tcp", f"127.0.0.1:{tcp_port}={SECRET}")
    server.wait_for(server.stderr, f"tunnelling TCP on 127.0.0.1:{tcp_port}")
    assert not any("every client will be refused" in line for line in server.stderr)
    start_client(
        ytun_cli,
        port,
        "--tcp-local",
        f"{tcp_port}=127.0.0.1:{tcp_echo}",
        env={"YTUN_IDENTIFIER": SECRET},
    )
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as conn:
        conn.sendall(b"tcp only\n")
        assert conn.makefile("rb").readline() == b"echo: tcp only\n"


# -- a refused identifier -----------------------------------------------------------------


def test_a_refused_client_exits_2_with_one_line(ytun_cli):
    port = free_port()
    start_server(ytun_cli, port, "--host", "a.test=another-identifier")
    client = ytun_cli("client", "--server", f"127.0.0.1:{port}", env={"YTUN_IDENTIFIER": SECRET})
    assert client.finish(STARTUP) == 2
    last = client.stderr[-1]
    assert last.startswith("ytun client: the server does not know this identifier")
    assert "--no-exit-on-refused" in last
    assert "Traceback" not in client.output()
    assert SECRET not in client.output()


def test_no_exit_on_refused_keeps_retrying(ytun_cli):
    port = free_port()
    start_server(ytun_cli, port, "--host", "a.test=another-identifier")
    client = ytun_cli(
        "client",
        "--server",
        f"127.0.0.1:{port}",
        "--no-exit-on-refused",
        env={"YTUN_IDENTIFIER": SECRET},
    )
    client.wait_for_count(client.stderr, "the server does not know this identifier", 2)
    assert client.process.poll() is None
    code, _ = client.stop()
    assert code == 0


# -- a CLI that explains itself -----------------------------------------------------------


def test_version(ytun_cli):
    process = ytun_cli("--version")
    assert process.finish(STARTUP) == 0
    assert process.stdout == [f"ytun {ytun.__version__}\n"]


def test_bare_ytun_prints_the_help_and_exits_2(ytun_cli):
    process = ytun_cli()
    assert process.finish(STARTUP) == 2
    text = "".join(process.stderr)
    assert text.startswith("usage: ytun ")
    for command in ("server", "client", "demo"):
        assert command in text


def test_every_flag_has_help_with_its_default():
    parser = build_parser()
    subcommands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    checked = 0
    for name, sub in subcommands.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"ytun {name} {action.option_strings} has no help"
            assert "(default: " in action.help, f"ytun {name} {action.option_strings}"
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("command", ["server", "client", "demo", "hosts", "tcp", "clients"])
def test_each_help_ends_with_two_examples(ytun_cli, command):
    process = ytun_cli(command, "--help")
    assert process.finish(STARTUP) == 0
    lines = "".join(process.stdout).rstrip().splitlines()
    assert lines[-3] == "examples:"
    for example in lines[-2:]:
        assert f"ytun {command}" in example
        assert example.startswith("  ")
    if command == "server":
        assert "--host HOST=IDENTIFIER" in "".join(process.stdout)


def test_listen_on_a_bare_colon_port_is_every_interface(ytun_cli):
    port = free_port()
    server = ytun_cli("server", "--listen", f":{port}", "--host", f"a.test={SECRET}")
    line = server.wait_for(server.stdout, "ytun server listening on")
    assert line.strip() == f"ytun server listening on http://*:{port} (every interface)"
    status, body = curl_status(f"http://127.0.0.1:{port}/", "nobody.test")
    assert (status, body.startswith("no virtual host")) == ("502", True)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--host", "http://a.test=ID"), "--host takes a host name, not a URL"),
        (("--host", "a.test/x=ID"), "a path ('/x') cannot be routed"),
        (("--listen", "8000"), "write :8000 for every interface"),
        (("--tls-cert", "{tmp}/none.pem", "--tls-key", "{tmp}/key.pem"), "{tmp}/none.pem"),
        (("--tls-cert", "{tmp}", "--tls-key", "{tmp}"), "cannot read the TLS certificate {tmp}"),
        (("--tls-cert", "{tmp}/cert.pem"), "--tls-cert and --tls-key go together"),
        (("--tls-cert", "{tmp}/cert.pem", "--tls-key", "{tmp}/cert.pem"), "{tmp}/cert.pem"),
    ],
    ids=["url", "path", "bare-port", "missing-cert", "directory", "cert-alone", "not-pem"],
)
def test_server_flag_mistakes_say_why(ytun_cli, tmp_path, args, reason):
    write_file(tmp_path / "cert.pem", "not a certificate\n")
    process = ytun_cli(
        "server", "--host", f"a.test={SECRET}", *(arg.format(tmp=tmp_path) for arg in args)
    )
    assert process.finish(STARTUP) == 2
    line = one_line("".join(process.stderr))
    assert line.startswith("ytun server: ")
    assert reason.format(tmp=tmp_path) in line
    assert "Traceback" not in process.output()
    assert SECRET not in process.output()


def test_a_missing_ca_bundle_is_named(ytun_cli, tmp_path):
    process = ytun_cli(
        "client",
        "--server",
        "127.0.0.1:1",
        "--tls-ca",
        f"{tmp_path}/ca.pem",
        env={"YTUN_IDENTIFIER": SECRET},
    )
    assert process.finish(STARTUP) == 2
    line = one_line("".join(process.stderr))
    assert line == f"ytun client: cannot read the TLS CA bundle {tmp_path}/ca.pem: " + (
        "No such file or directory"
    )


def test_no_message_names_a_go_api(ytun_cli):
    texts = []
    for args in (("--help",), ("server", "--help"), ("client", "--help"), ("demo", "--help")):
        process = ytun_cli(*args)
        process.finish(STARTUP)
        texts.append(process.output())
    texts.append(pathlib.Path(cli.__file__).read_text())
    for text in texts:
        assert not re.search(r"\b(server|client)\.[A-Z]\w*\(", text), text
        assert not re.search(r"\b(AddHost|AddAddr|DeleteHost|ServerConfig\.)", text)


# -- stopping -----------------------------------------------------------------------------


class _SlowOriginHandler(_OriginHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            self.server.entered.set()  # type: ignore[attr-defined]
            self.server.release.wait(60)  # type: ignore[attr-defined]
        super().do_GET()


@pytest.fixture
def slow_origin() -> Iterator[tuple[int, threading.Event]]:
    """A local HTTP service whose /slow answers only at the end of the test; yields its
    port and an event set once a /slow request arrived."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowOriginHandler)
    server.daemon_threads = True
    server.entered = threading.Event()  # type: ignore[attr-defined]
    server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], server.entered  # type: ignore[attr-defined]
    server.release.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_stops_at_once_after_the_in_flight_count(ytun_cli, slow_origin, sig):
    origin_port, entered = slow_origin
    port = free_port()
    server, _ = start_pair(
        ytun_cli, port, "--local", f"127.0.0.1:{origin_port}", server_args=("--grace", "600")
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET /slow HTTP/1.1\r\nHost: app.test:{port}\r\n\r\n".encode())
        assert entered.wait(10)
        server.process.send_signal(sig)
        line = server.wait_for(server.stderr, "in flight")
        assert "1 request in flight, waiting up to 600 s" in line
        assert server.process.poll() is None  # the grace period runs
        code, took = server.stop(sig)
    assert (code, took < STOP) == (128 + sig, True)
    assert len([line for line in server.stderr if "in flight" in line]) == 1


def test_a_malformed_host_flag_does_not_echo_the_identifier(ytun_cli):
    process = ytun_cli("server", "--host", f"={SECRET}")
    assert process.finish(STARTUP) == 2
    line = one_line("".join(process.stderr))
    assert line == "ytun server: --host must look like HOST=IDENTIFIER, got '=…'"


def test_hosts_differing_in_case_are_one_route(tmp_path):
    config = write_file(tmp_path / "s.toml", '[server.hosts]\n"App.Test" = "from-the-file"\n')
    args = build_parser().parse_args(
        ["server", "--config", str(config), "--host", "APP.test=from-a-flag"]
    )
    hosts, _ = cli.server_config(args).routes(load_server_file(config))
    assert hosts == {"app.test": "from-a-flag"}


def test_a_reload_names_the_keys_that_wait_for_a_restart(ytun_cli, tmp_path):
    port = free_port()
    write_file(tmp_path / "app.id", SECRET)
    routes = '[server.hosts]\n"a.test" = { identifier_file = "app.id" }\n'
    config = write_file(
        tmp_path / "server.toml",
        f'[server]\nlisten = "127.0.0.1:{port}"\nidle_timeout = 120\nstream_timeout = 10\n'
        + routes,
    )
    server = ytun_cli("server", "--config", str(config), "--stream-timeout", "5")
    server.wait_for(server.stdout, "ytun server listening on")
    write_file(
        config,
        f'[server]\nlisten = "127.0.0.1:{port}"\nidle_timeout = 60\nstream_timeout = 20\n'
        'log_level = "debug"\n' + routes,
    )
    server.process.send_signal(signal.SIGHUP)
    line = server.wait_for(server.stderr, "when the server restarts")
    assert "idle_timeout changed" in line  # stream_timeout is a flag's: the file's is moot
    assert "reloaded" in server.wait_for(server.stderr, "no route changed")
    assert server.process.poll() is None


# -- TLS through the config files ---------------------------------------------------------


def test_tls_from_the_config_files(ytun_cli, origin, tmp_path):
    trustme = pytest.importorskip("trustme")
    if CURL is None:
        pytest.skip("curl is not installed")
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certificate.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    certificate.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    write_file(tmp_path / "app.id", SECRET)
    port = free_port()
    server_config = write_file(
        tmp_path / "server.toml",
        f'[server]\nlisten = "127.0.0.1:{port}"\ntls_cert = "server.pem"\n'
        f'tls_key = "server.key"\n[server.hosts]\n"app.test" = {{ identifier_file = "app.id" }}\n',
    )
    client_config = write_file(
        tmp_path / "client.toml",
        f'[client]\nserver = "127.0.0.1:{port}"\ntls_ca = "ca.pem"\n'
        f'identifier_file = "app.id"\nlocal = "127.0.0.1:{origin}"\n',
    )
    server = ytun_cli("server", "--config", str(server_config))
    server.wait_for(server.stdout, f"ytun server listening on https://127.0.0.1:{port}")
    client = ytun_cli("client", "--config", str(client_config))
    client.wait_for(client.stderr, "tunnel connected")
    result = subprocess.run(
        [
            CURL,
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            "--cacert",
            str(tmp_path / "ca.pem"),
            "-H",
            "Host: app.test",
            f"https://127.0.0.1:{port}/tls",
        ],
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert result.stdout.decode() == "origin says /tls to app.test"
    assert "cleartext" not in client.output()


def test_an_encrypted_tls_key_is_refused_without_a_prompt(ytun_cli, tmp_path):
    trustme = pytest.importorskip("trustme")
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    certificate = trustme.CA().issue_cert("127.0.0.1")
    key = serialization.load_pem_private_key(certificate.private_key_pem.bytes(), None)
    (tmp_path / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    certificate.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    process = ytun_cli(
        "server",
        "--host",
        f"a.test={SECRET}",
        "--tls-cert",
        str(tmp_path / "server.pem"),
        "--tls-key",
        str(tmp_path / "server.key"),
    )
    assert process.finish(STARTUP) == 2
    line = one_line("".join(process.stderr))
    assert line == (
        f"ytun server: the TLS key {tmp_path}/server.key is encrypted; "
        "ytun needs it without a passphrase"
    )


def test_trust_forwarded_and_access_log_flags_win_over_the_file(tmp_path):
    config = write_file(
        tmp_path / "s.toml",
        '[server]\ntrust_forwarded = ["10.0.0.0/8"]\naccess_log = "access.log"\n',
    )
    from_file = cli.server_config(build_parser().parse_args(["server", "--config", str(config)]))
    assert from_file.trust_forwarded == ("10.0.0.0/8",)
    assert from_file.access_log == str(tmp_path / "access.log")
    args = build_parser().parse_args(
        [
            "server",
            "--config",
            str(config),
            "--trust-forwarded",
            "192.0.2.0/24",
            "--trust-forwarded",
            "::1",
            "--access-log",
            "off",
        ]
    )
    flags = cli.server_config(args)
    assert (flags.trust_forwarded, flags.access_log) == (("192.0.2.0/24", "::1"), "off")
    default = cli.server_config(build_parser().parse_args(["server"]))
    assert (default.trust_forwarded, default.access_log) == ((), "stdout")


def test_a_bad_trust_forwarded_network_is_a_usage_error():
    args = build_parser().parse_args(["server", "--trust-forwarded", "10.0.0.0/99"])
    with pytest.raises(UsageError, match="--trust-forwarded must be an IP network"):
        cli.server_config(args)


def test_access_log_off_writes_no_lines(ytun_cli, origin):
    if CURL is None:
        pytest.skip("curl is not installed")
    port = free_port()
    server, _client = start_pair(
        ytun_cli, port, "--local", f"127.0.0.1:{origin}", server_args=("--access-log", "off")
    )
    assert curl(f"http://127.0.0.1:{port}/quiet", f"app.test:{port}").startswith("origin says")
    server.stop(signal.SIGTERM)
    assert not [line for line in server.stdout if "/quiet" in line]
    assert not [line for line in server.stderr if "/quiet" in line]
