"""``ytun server --registry redis://…``, run for real: a redis-server of the test's own and
two or three ``python -m ytun server`` processes on loopback, with ``ytun client`` and an
origin. A client connected to one node serves requests sent to every node; when its node
is killed it reconnects to the next server of its list and the other nodes reach it there;
Redis killed and restarted empty: the nodes keep serving what they hold, log that they are
not ready, and recover; a node with another cluster secret is refused; bad flag sets end
the server with the reason."""

from __future__ import annotations

import pathlib
import re
import signal
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator

import pytest
import test_cli
import trustme
from redis_helpers import RedisServer, redis_server  # noqa: F401 - fixture
from test_cli import Ytun, free_port, write_file
from test_workers import get, origin  # noqa: F401 - fixture

ytun_cli = test_cli.ytun_cli

IDENTIFIER = "S3CRET-node-client"
DEADLINE = 40  # seconds: generous; a dead node's client is taken over at its first retry


class Nodes:
    def __init__(self, ytun_cli, redis: RedisServer, directory: pathlib.Path) -> None:
        self._start = ytun_cli
        self.redis = redis
        self.secret = write_file(directory / "cluster.secret", "c" * 40 + "\n")
        self.other_secret = write_file(directory / "other.secret", "d" * 40 + "\n")
        self.ports: dict[str, int] = {}

    def start(
        self, name: str, *args: str, secret: pathlib.Path | None = None, scheme: str = "http"
    ) -> Ytun:
        port = self.ports.setdefault(name, free_port())
        server = self._start(
            "server",
            "--listen",
            f"127.0.0.1:{port}",
            "--registry",
            self.redis.url,
            "--cluster-listen",
            f"127.0.0.1:{free_port()}",
            "--cluster-secret-file",
            str(secret or self.secret),
            "--host",
            f"app.test={IDENTIFIER}",
            "--access-log",
            "off",
            *args,
        )
        server.wait_for(server.stdout, f"ytun server listening on {scheme}://127.0.0.1:{port}")
        return server


@pytest.fixture
def nodes(ytun_cli, redis_server: RedisServer, tmp_path: pathlib.Path) -> Iterator[Nodes]:  # noqa: F811
    yield Nodes(ytun_cli, redis_server, tmp_path)


def get_metrics(port: int) -> str:
    """The Prometheus text of the admin API on loopback (no token needed there)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def until_served(port: int, path: str, deadline: float = DEADLINE) -> bytes:
    """The body of the first 200 for ``path`` on the node at ``port``, asked until then."""
    end = time.monotonic() + deadline
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() < end:
        try:
            last = get(port, "app.test", path)
        except OSError as exc:
            last = (0, str(exc).encode())
        if last[0] == 200:
            return last[1]
        time.sleep(0.1)
    raise AssertionError(f"not served by :{port} in {deadline} s; last answer {last}")


def client(ytun_cli, nodes: Nodes, origin: int, *names: str) -> Ytun:  # noqa: F811
    servers = ",".join(f"127.0.0.1:{nodes.ports[name]}" for name in names)
    return ytun_cli(
        "client",
        "--server",
        servers,
        "--local",
        f"127.0.0.1:{origin}",
        env={"YTUN_IDENTIFIER": IDENTIFIER},
    )


def test_a_client_on_one_node_is_served_by_all_and_moves_when_its_node_dies(
    ytun_cli,
    nodes: Nodes,
    origin: int,  # noqa: F811
) -> None:
    b_admin = free_port()
    a, c = nodes.start("a"), nodes.start("c")
    b = nodes.start("b", "--admin", f"127.0.0.1:{b_admin}")
    tunnel = client(ytun_cli, nodes, origin, "a", "b")
    tunnel.wait_for(tunnel.stderr, f"tunnel connected to 127.0.0.1:{nodes.ports['a']}")
    for name in ("a", "b", "c"):
        body = until_served(nodes.ports[name], f"/{name}")
        assert body == f"origin says /{name} to app.test".encode()
    a.process.kill()  # no goodbye: its records stay in Redis, its hop port closes
    a.process.wait(timeout=10)
    tunnel.wait_for(tunnel.stderr, f"tunnel connected to 127.0.0.1:{nodes.ports['b']}", DEADLINE)
    # b found a's record still in Redis, and a's hop port refusing: it took over at once.
    b.wait_for(b.stderr, "took a client over from node")
    assert until_served(nodes.ports["c"], "/after") == b"origin says /after to app.test"
    assert until_served(nodes.ports["b"], "/at-b") == b"origin says /at-b to app.test"
    assert IDENTIFIER not in b.output() + c.output() + tunnel.output()
    # b's metrics tell the hops it took and the takeover.
    metrics = get_metrics(b_admin)
    assert re.search(r"^ytun_cluster_hops_accepted_total [1-9]", metrics, re.M), metrics
    assert re.search(r"^ytun_cluster_takeovers_total 1\.0$", metrics, re.M), metrics
    assert c.stop()[0] == 0 and b.stop()[0] == 0


def test_redis_restarted_nodes_keep_serving_report_not_ready_and_recover(
    ytun_cli,
    nodes: Nodes,
    origin: int,  # noqa: F811
) -> None:
    a, b = nodes.start("a"), nodes.start("b")
    tunnel = client(ytun_cli, nodes, origin, "a")
    tunnel.wait_for(tunnel.stderr, "tunnel connected")
    assert until_served(nodes.ports["b"], "/before") == b"origin says /before to app.test"
    nodes.redis.stop()
    for node in (a, b):
        node.wait_for(node.stderr, "not ready: registry")
    assert get(nodes.ports["a"], "app.test", "/down") == (200, b"origin says /down to app.test")
    nodes.redis.start()  # empty, on the same port
    for node in (a, b):
        node.wait_for(node.stderr, "is back; routes reloaded", DEADLINE)
    assert until_served(nodes.ports["b"], "/back") == b"origin says /back to app.test"
    # A node started now finds every route and the holder in the refilled Redis.
    c = nodes.start("c")
    assert until_served(nodes.ports["c"], "/new") == b"origin says /new to app.test"
    for node in (a, b, c):
        assert node.stop(signal.SIGTERM)[0] == 0


def test_a_node_with_another_cluster_secret_is_refused(
    ytun_cli,
    nodes: Nodes,
    origin: int,  # noqa: F811
) -> None:
    a = nodes.start("a")
    stranger = nodes.start("x", secret=nodes.other_secret)
    tunnel = client(ytun_cli, nodes, origin, "a")
    tunnel.wait_for(tunnel.stderr, "tunnel connected")
    assert until_served(nodes.ports["a"], "/ok") == b"origin says /ok to app.test"
    # Until the stranger hears who holds the client it answers 502 by itself; then its
    # hop is refused, and the public client still gets a 502.
    deadline = time.monotonic() + DEADLINE
    while "refused a cluster hop" not in a.output() and time.monotonic() < deadline:
        assert get(nodes.ports["x"], "app.test", "/no") == (
            502,
            b"no client session established\n",
        )
        time.sleep(0.2)
    a.wait_for(a.stderr, "refused a cluster hop from 127.0.0.1: wrong cluster secret")
    assert "d" * 40 not in a.output() and "c" * 40 not in a.output() + stranger.output()


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--cluster-listen", "127.0.0.1:7999"], "need --registry"),
        (["--registry", "http://x"], "redis://"),
        (["--registry", "redis://127.0.0.1:1/0"], "--cluster-listen"),
        (
            ["--registry", "redis://127.0.0.1:1/0", "--cluster-listen", ":7999"],
            "--cluster-advertise",
        ),
        (
            ["--registry", "redis://127.0.0.1:1/0", "--cluster-listen", "127.0.0.1:7999"],
            "cluster secret",
        ),
        (["--registry", "redis://127.0.0.1:1/0", "--state", "x.db"], "give one"),
    ],
)
def test_cluster_flags_that_do_not_fit_end_the_server_with_the_reason(
    ytun_cli, flags: list[str], reason: str
) -> None:
    server = ytun_cli("server", "--listen", f"127.0.0.1:{free_port()}", *flags)
    assert server.process.wait(timeout=20) == 2
    server.wait_for(server.stderr, reason)


def test_an_unreachable_registry_ends_the_server_with_status_1(
    ytun_cli, tmp_path: pathlib.Path
) -> None:
    secret = write_file(tmp_path / "s", "k" * 32)
    server = ytun_cli(
        "server",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--registry",
        f"redis://:pw-hidden@127.0.0.1:{free_port()}/0",
        "--cluster-listen",
        f"127.0.0.1:{free_port()}",
        "--cluster-secret-file",
        str(secret),
    )
    assert server.process.wait(timeout=20) == 1
    line = server.wait_for(server.stderr, "registry redis://***@127.0.0.1")
    assert "pw-hidden" not in server.output()
    assert str(line).startswith("ytun server: registry")


def test_with_a_certificate_the_hop_between_nodes_is_tls_too(
    ytun_cli,
    nodes: Nodes,
    origin: int,  # noqa: F811
    tmp_path: pathlib.Path,
) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certificate.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    certificate.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = ("--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"))
    a = nodes.start("a", *tls, "--cluster-tls-ca", str(tmp_path / "ca.pem"), scheme="https")
    b = nodes.start("b", *tls, "--cluster-tls-ca", str(tmp_path / "ca.pem"), scheme="https")
    # A node that does not trust A's certificate cannot carry requests to it.
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    x = nodes.start("x", *tls, "--cluster-tls-ca", str(other), scheme="https")
    for node in (a, b, x):
        node.wait_for(node.stderr, "(TLS)")
    tunnel = ytun_cli(
        "client",
        "--server",
        f"127.0.0.1:{nodes.ports['a']}",
        "--tls-ca",
        str(tmp_path / "ca.pem"),
        "--local",
        f"127.0.0.1:{origin}",
        env={"YTUN_IDENTIFIER": IDENTIFIER},
    )
    tunnel.wait_for(tunnel.stderr, "tunnel connected")
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

    def tls_get(port: int, path: str) -> tuple[int, bytes]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            return get(port, "app.test", path, sock)

    deadline = time.monotonic() + DEADLINE
    answer = tls_get(nodes.ports["b"], "/sealed")
    while answer[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        answer = tls_get(nodes.ports["b"], "/sealed")
    assert answer == (200, b"origin says /sealed to app.test")
    x.wait_for(x.stderr, "(TLS)")
    deadline = time.monotonic() + DEADLINE
    while "cannot reach node" not in x.output() and time.monotonic() < deadline:
        assert tls_get(nodes.ports["x"], "/no")[0] == 502
        time.sleep(0.2)
    assert "CERTIFICATE_VERIFY_FAILED" in x.output()
