"""``ytun server --workers N``, run for real: a supervising parent and its worker
processes on loopback, with clients, an origin and plain sockets.

Connections are spread over the workers by the kernel (SO_REUSEPORT), so each test opens
many fresh public connections: those that land on a worker without the client are handed
to the one holding it, and the workers' debug log says how many were."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import test_cli
import test_state_cli
from test_cli import Ytun, free_port, write_file

from ytun.tunnel import koding

SECRETS = {"a.test": "S3CRET-worker-a", "b.test": "S3CRET-worker-b", "c.test": "S3CRET-worker-c"}
CONNECTIONS = 16  # fresh public connections per host: some land on each worker
DEADLINE = 20  # seconds for a restarted worker's clients to be served again
HANDED = "handed an HTTP connection to worker"

# The command-line tests' fixtures: subprocesses killed at the end, a TCP echo service.
ytun_cli = test_cli.ytun_cli
tcp_echo = test_cli.tcp_echo


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    started = threading.Semaphore(0)  # one release per /slow request received

    def do_GET(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._echo_upgraded()
            return
        if self.path.startswith("/slow"):
            type(self).started.release()
            time.sleep(1.5)
        self._answer(f"origin says {self.path} to {self.headers.get('Host')}".encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _echo_upgraded(self) -> None:
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        for line in self.rfile:
            self.wfile.write(b"echo " + line)
            self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    server.daemon_threads = True
    _Origin.started = threading.Semaphore(0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def request(port: int, raw: bytes, sock: socket.socket | None = None) -> tuple[int, bytes]:
    """Send ``raw`` (on ``sock``, else a fresh connection); the status and the body."""
    conn = sock or socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        conn.sendall(raw)
        reader = conn.makefile("rb")
        status = int(reader.readline().split()[1])
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, reader.read(length)
    finally:
        if sock is None:
            conn.close()


def get(port: int, host: str, path: str = "/", sock: socket.socket | None = None):
    return request(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), sock)


#: How the workers share the port: their own SO_REUSEPORT sockets, or the parent's one.
SHARING = pytest.mark.parametrize("share", ["reuse_port", "inherit"])


def start_workers(
    ytun_cli, port: int, *args: str, workers: str = "2", share: str = "reuse_port"
) -> Ytun:
    server = ytun_cli(
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--workers",
        workers,
        "--log-level",
        "debug",
        "--access-log",
        "off",
        *args,
        env={"YTUN_SHARE_LISTENER": share},
    )
    server.wait_for(server.stdout, f"ytun server listening on http://127.0.0.1:{port}")
    return server


def host_flags(port: int, hosts=SECRETS) -> list[str]:
    flags = []
    for host, secret in hosts.items():
        flags += ["--host", f"{host}:{port}={secret}"]
    return flags


def start_client(ytun_cli, port: int, secret: str, origin: int, server: Ytun, host: str) -> Ytun:
    client = test_state_cli.start_client(ytun_cli, port, secret, origin)
    server.wait_for(server.stderr, f"client for {host}:{port} connected")
    return client


def count(server: Ytun, text: str) -> int:
    return sum(text in line for line in list(server.stderr))


def settled(server: Ytun, text: str, expected: int) -> None:
    """Exactly ``expected`` lines with ``text``, waiting for lines logged after an answer."""
    server.wait_for_count(server.stderr, text, expected, timeout=10)
    assert count(server, text) == expected


def holder_of(server: Ytun, host: str) -> str:
    """The worker a client's session lives in, from its last "connected" line."""
    lines = [line for line in server.stderr if f"client for {host}" in line and "connected" in line]
    return re.search(r"\[worker (\d+)\]", lines[-1]).group(1)


def worker_pids(server: Ytun) -> dict[str, int]:
    pids = {}
    for line in server.stderr:
        found = re.search(r"worker (\d+) started \(pid (\d+)\)", line)
        if found:
            pids[found.group(1)] = int(found.group(2))
    return pids


@SHARING
def test_every_host_is_served_wherever_its_connections_land(ytun_cli, origin, share):
    port = free_port()
    server = start_workers(ytun_cli, port, *host_flags(port), share=share)
    for host, secret in SECRETS.items():
        start_client(ytun_cli, port, secret, origin, server, host)
    for host in SECRETS:
        for n in range(CONNECTIONS):
            assert get(port, f"{host}:{port}", f"/{n}") == (
                200,
                f"origin says /{n} to {host}:{port}".encode(),
            )
    handed = count(server, HANDED)
    assert handed >= 1  # the holder took connections another worker accepted
    # Each worker logs after it answers, so a line can trail the last response.
    settled(server, "adopted an HTTP connection", handed)

    # One keep-alive connection, its requests for clients in turn: it is handed on
    # between workers as often as its next request needs, in order.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        for n in range(3):
            for host in SECRETS:
                assert get(port, f"{host}:{port}", f"/k{n}", conn) == (
                    200,
                    f"origin says /k{n} to {host}:{port}".encode(),
                )
    assert not any(secret in server.output() for secret in SECRETS.values())
    assert "Traceback" not in server.output()


def test_a_request_body_and_a_websocket_upgrade_survive_a_hand_off(ytun_cli, origin):
    port = free_port()
    hosts = {"a.test": SECRETS["a.test"]}
    server = start_workers(ytun_cli, port, *host_flags(port, hosts))
    start_client(ytun_cli, port, SECRETS["a.test"], origin, server, "a.test")
    # 300 kB: the first read holds more than one hand-off message carries.
    body = os.urandom(300_000)
    head = f"POST /up HTTP/1.1\r\nHost: a.test:{port}\r\nContent-Length: {len(body)}\r\n\r\n"
    for _ in range(CONNECTIONS):
        status, answer = request(port, head.encode() + body)
        assert (status, answer) == (200, f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())
    bodies_handed = count(server, HANDED)
    assert bodies_handed >= 1

    upgrade = (
        f"GET /ws HTTP/1.1\r\nHost: a.test:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    for n in range(CONNECTIONS):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            # The first bytes after the head travel with it when it is handed over.
            conn.sendall(upgrade + f"early {n}\n".encode())
            reader = conn.makefile("rb")
            assert reader.readline().startswith(b"HTTP/1.1 101")
            while reader.readline() != b"\r\n":
                pass
            assert reader.readline() == f"echo early {n}\n".encode()
            conn.sendall(f"later {n}\n".encode())
            assert reader.readline() == f"echo later {n}\n".encode()
    assert count(server, HANDED) > bodies_handed


@SHARING
def test_a_tcp_route_is_served_from_every_worker(ytun_cli, tcp_echo, share):
    port, tcp_port = free_port(), free_port()
    secret = SECRETS["a.test"]
    server = start_workers(ytun_cli, port, "--tcp", f"127.0.0.1:{tcp_port}={secret}", share=share)
    client = ytun_cli(
        "client",
        "--server",
        f"127.0.0.1:{port}",
        "--tcp-local",
        f"{tcp_port}=127.0.0.1:{tcp_echo}",
        env={"YTUN_IDENTIFIER": secret},
    )
    client.wait_for(client.stderr, "tunnel connected")
    server.wait_for(server.stderr, f"client for tcp:{tcp_port} connected")
    holder = holder_of(server, f"tcp:{tcp_port}")
    for n in range(CONNECTIONS):
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as conn:
            conn.sendall(f"line {n}\n".encode())
            assert conn.makefile("rb").readline() == f"echo: line {n}\n".encode()
    if share == "reuse_port" or holder != "0":  # inherited: worker 0 accepts them all
        assert count(server, "handed a TCP connection to worker") >= 1


def test_a_second_client_with_the_same_identifier_is_refused_on_any_worker(ytun_cli, origin):
    port = free_port()
    hosts = {"a.test": SECRETS["a.test"]}
    server = start_workers(ytun_cli, port, *host_flags(port, hosts))
    start_client(ytun_cli, port, SECRETS["a.test"], origin, server, "a.test")
    connect = koding.connect_request(f"127.0.0.1:{port}", SECRETS["a.test"])
    for _ in range(CONNECTIONS):
        status, body = request(port, connect)
        # The first client is alive: the rule of one process, wherever this one landed.
        assert (status, body) == (502, b"control conn already exist. \n\n")
    server.wait_for(server.stderr, "gave a control connection to the worker holding its client")
    settled(server, "refused a second client for a.test", CONNECTIONS)
    assert count(server, "connected from") == 1
    assert get(port, f"a.test:{port}") == (200, f"origin says / to a.test:{port}".encode())


def test_a_killed_worker_is_restarted_and_its_clients_come_back(ytun_cli, origin):
    port = free_port()
    server = start_workers(ytun_cli, port, *host_flags(port))
    for host, secret in SECRETS.items():
        start_client(ytun_cli, port, secret, origin, server, host)
    node = holder_of(server, "a.test")
    held = [host for host in SECRETS if holder_of(server, host) == node]
    os.kill(worker_pids(server)[node], signal.SIGKILL)
    server.wait_for(server.stderr, f"worker {node} ended (killed by SIGKILL); starting it again")
    server.wait_for(server.stderr, f"worker {node} started", timeout=DEADLINE)
    for host in held:  # they reconnect by themselves, to whichever worker
        server.wait_for_count(server.stderr, f"client for {host}:{port} connected", 2, DEADLINE)
    deadline = time.monotonic() + DEADLINE
    for host in SECRETS:
        for n in range(CONNECTIONS):
            while True:
                status, body = get(port, f"{host}:{port}", f"/{n}")
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)  # the new holder's announcement is on its way
            assert (status, body) == (200, f"origin says /{n} to {host}:{port}".encode())


def test_sigterm_drains_every_worker(ytun_cli, origin):
    port = free_port()
    server = start_workers(ytun_cli, port, *host_flags(port), "--grace", "5")
    for host, secret in SECRETS.items():
        start_client(ytun_cli, port, secret, origin, server, host)
    answers: list[tuple[int, bytes]] = []

    def slow(host: str, n: int) -> None:
        answers.append(get(port, f"{host}:{port}", f"/slow{n}"))

    threads = [threading.Thread(target=slow, args=(host, n)) for host in SECRETS for n in range(4)]
    for thread in threads:
        thread.start()
    for _ in threads:  # every request reached the origin: in flight in some worker
        assert _Origin.started.acquire(timeout=10)
    code, took = server.stop(signal.SIGTERM, timeout=10)
    for thread in threads:
        thread.join(10)
    assert code == 0
    assert took < 5
    assert sorted(status for status, _ in answers) == [200] * len(threads)
    for pid in worker_pids(server).values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "Traceback" not in server.output()


def test_sighup_adds_a_host_in_every_worker(ytun_cli, origin, tmp_path):
    port = free_port()
    write_file(tmp_path / "a.id", SECRETS["a.test"])

    def config(*hosts: str) -> str:
        lines = [f'[server]\nlisten = "127.0.0.1:{port}"\nworkers = 2\n[server.hosts]']
        lines += [f'"{host}:{port}" = {{ identifier_file = "a.id" }}' for host in hosts]
        return "\n".join(lines) + "\n"

    path = write_file(tmp_path / "server.toml", config("a.test"))
    server = ytun_cli("server", "--config", str(path), "--log-level", "debug")
    server.wait_for(server.stdout, "(2 worker processes)")
    start_client(ytun_cli, port, SECRETS["a.test"], origin, server, "a.test")
    assert get(port, f"new.test:{port}")[0] == 502

    write_file(path, config("a.test", "new.test"))
    server.process.send_signal(signal.SIGHUP)
    lines = server.wait_for_count(server.stderr, "reloaded", 2)
    assert {re.search(r"\[worker (\d)\]", line).group(1) for line in lines} == {"0", "1"}
    assert all(f"+host new.test:{port}" in line for line in lines)
    for n in range(CONNECTIONS):
        assert get(port, f"new.test:{port}", f"/{n}") == (
            200,
            f"origin says /{n} to new.test:{port}".encode(),
        )
    assert count(server, "connected from") == 1  # the client stayed connected


def test_one_worker_is_one_process(ytun_cli, origin):
    port = free_port()
    server = ytun_cli("server", "--listen", f"127.0.0.1:{port}", "--workers", "1")
    line = server.wait_for(server.stdout, "ytun server listening")
    assert "worker" not in line
    children = pathlib_children(server.process.pid)
    assert children == []


def pathlib_children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        return file.read().split()


def test_workers_with_tls_is_a_usage_error(ytun_cli, tmp_path):
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    cert = authority.issue_cert("localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "both.pem"))
    server = ytun_cli(
        "server",
        "--workers",
        "2",
        "--tls-cert",
        str(tmp_path / "both.pem"),
        "--tls-key",
        str(tmp_path / "both.pem"),
    )
    assert server.finish() == 2
    assert "TLS session cannot move between processes" in "".join(server.stderr)


@pytest.mark.parametrize("value", ["0", "-1", "many", "2000"])
def test_a_bad_number_of_workers_is_a_usage_error(ytun_cli, value):
    server = ytun_cli("server", "--workers", value)
    assert server.finish() == 2
    assert "--workers must be" in "".join(server.stderr)


def test_a_busy_port_ends_the_parent_at_once(ytun_cli):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        server = ytun_cli("server", "--listen", f"127.0.0.1:{port}", "--workers", "2")
        assert server.finish() == 1
    assert f"cannot listen on 127.0.0.1:{port}" in "".join(server.stderr)
    assert "Traceback" not in server.output()


def test_a_stray_worker_variable_is_a_usage_error(ytun_cli):
    server = ytun_cli("server", env={"YTUN_WORKER": "{not json"})
    assert server.finish() == 2
    assert "$YTUN_WORKER is unreadable" in "".join(server.stderr)
    assert "Traceback" not in server.output()
