"""Metrics and health (``ytun/control/metrics.py``, ``health.py``): ``/metrics`` scraped
after real requests through a real tunnel and parsed with prometheus_client's own parser,
bounded labels, per-server registries, the install hint without prometheus_client, and
the ``/healthz`` and ``/readyz`` answers."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import textwrap
import threading

import aiohttp
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_links import connect as control_connect
from test_tunnel_http import wait_until
from test_tunnel_tcp import LocalServer, echo_handler, exchange
from tunnel_helpers import Tunnel, raw_request

from ytun import Server
from ytun.control import metrics, web
from ytun.control.metrics import TunnelMetrics, add_metrics_routes
from ytun.registry.sqlite import SqliteRegistry

TIMEOUT = 10
TOKEN = "metrics-test-token"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def token_guard(request: web.Request) -> web.Response | None:
    if request.headers.get("authorization") == f"Bearer {TOKEN}":
        return None
    return web.error_response(401, "missing or wrong token")


async def admin_for(server: Server) -> tuple[asyncio.AbstractServer, int]:
    router = web.Router(guard=token_guard)
    add_metrics_routes(router, server)
    listener = await web.serve(router, "127.0.0.1", 0)
    return listener, listener.sockets[0].getsockname()[1]


async def http_get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, str, bytes]:
    """Status, content type and body of ``GET path`` on 127.0.0.1:port."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response,
    ):
        return response.status, response.content_type, await response.read()


def parse(text: str) -> Samples:
    """Every sample by name and labels, parsed by prometheus_client itself."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(port: int) -> Samples:
    status, content_type, body = await http_get(port, "/metrics")
    assert status == 200, body
    assert content_type == "text/plain"
    return parse(body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def request_bytes(target: str, host: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


async def test_requests_bytes_and_durations_through_a_tunnel_are_scraped() -> None:
    server = Server()
    async with Tunnel(server=server) as t:
        listener, port = await admin_for(server)
        sent = received = 0
        for index in range(5):
            raw = request_bytes(f"/?echo=hello{index}", t.host)
            answer = await raw_request(t.port, raw)
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello%d" % index)
            received += len(raw)
            sent += len(answer)
        raw = request_bytes("/nowhere", t.host)
        answer = await raw_request(t.port, raw)
        assert answer.startswith(b"HTTP/1.1 404 ")
        received += len(raw)
        sent += len(answer)
        unknown = await raw_request(t.port, request_bytes("/secret-path", "nobody.test"))
        assert unknown.startswith(b"HTTP/1.1 502 ")
        upload = b"x" * 3000
        raw_upload = (
            f"POST /upload HTTP/1.1\r\nHost: {t.host}\r\nContent-Length: {len(upload)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + upload
        answer = await raw_request(t.port, raw_upload)
        assert answer.startswith(b"HTTP/1.1 200 ")
        received += len(raw_upload)
        sent += len(answer)

        samples = await scrape(port)
        listener.close()

    host = t.host
    assert value(samples, "ytun_requests_total", host=host, code="2xx") == 6
    assert value(samples, "ytun_requests_total", host=host, code="4xx") == 1
    assert value(samples, "ytun_requests_total", host="-", code="5xx") == 1
    assert value(samples, "ytun_request_duration_seconds_count", host=host) == 7
    assert value(samples, "ytun_request_duration_seconds_bucket", host=host, le="+Inf") == 7
    assert value(samples, "ytun_request_duration_seconds_sum", host=host) > 0
    assert value(samples, "ytun_bytes_sent_total", host=host) == sent
    assert value(samples, "ytun_bytes_received_total", host=host) == received
    assert value(samples, "ytun_clients_connected") == 1
    assert value(samples, "ytun_sessions") == 1
    assert value(samples, "ytun_open_streams") >= 1  # the control stream at least
    labels = {dict(key[1]).get("host") for key in samples}
    assert labels <= {None, host, "-"}  # never a path, an unknown name or an identifier
    assert not any(t.identifier in str(key) for key in samples)


async def test_a_websocket_counts_once_with_its_bytes_both_ways() -> None:
    server = Server()
    async with Tunnel(server=server) as t:
        listener, port = await admin_for(server)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.ws_connect(f"{t.url}/ws", headers={"Host": t.host}) as ws,
        ):
            for _ in range(3):
                await ws.send_bytes(b"m" * 1000)
                assert await ws.receive_bytes() == b"m" * 1000
        await wait_until(lambda: metrics_of(server).hosts[t.host].sent > 3000)
        samples = await scrape(port)
        listener.close()
    assert value(samples, "ytun_requests_total", host=t.host, code="1xx") == 1
    assert value(samples, "ytun_bytes_sent_total", host=t.host) > 3000
    assert value(samples, "ytun_bytes_received_total", host=t.host) > 3000


def metrics_of(server: Server) -> TunnelMetrics:
    observer = server.observer
    assert isinstance(observer, TunnelMetrics)
    return observer


async def test_refused_control_connections_are_counted_by_reason() -> None:
    server = Server(refusal_burst=2, refusal_rate=0.001)
    server.add_host("known.test", "KNOWN-SECRET")
    tunnel_listener = await server.serve("127.0.0.1", 0)
    tunnel_port = tunnel_listener.sockets[0].getsockname()[1]
    listener, port = await admin_for(server)
    for expected in (b"HTTP/1.1 502 ", b"HTTP/1.1 502 ", b"HTTP/1.1 429 "):
        # two answered 502, the third one rate limited
        reader, writer = await asyncio.open_connection("127.0.0.1", tunnel_port)
        writer.write(control_connect(secrets.token_urlsafe(16)))
        assert (await asyncio.wait_for(reader.readline(), TIMEOUT)).startswith(expected)
        writer.close()
    samples = await scrape(port)
    listener.close()
    await server.close(grace=0)
    assert value(samples, "ytun_control_refused_total", reason="unknown_identifier") == 2
    assert value(samples, "ytun_control_refused_total", reason="rate_limited") == 1
    assert value(samples, "ytun_control_refused_total", reason="duplicate") == 0
    assert value(samples, "ytun_clients_connected") == 0


async def test_a_client_that_connects_again_is_a_reconnect() -> None:
    server = Server()
    async with Tunnel(server=server) as t:
        listener, port = await admin_for(server)
        assert value(await scrape(port), "ytun_client_reconnects_total") == 0
        link = server.link_for(server.registry.key_for(t.identifier))
        assert link is not None
        link.session.abort()
        await wait_until(lambda: server.stats().reconnects == 1)
        await t.wait_server_sees_client()
        samples = await scrape(port)
        listener.close()
    assert value(samples, "ytun_client_reconnects_total") == 1
    assert value(samples, "ytun_clients_connected") == 1


async def test_tcp_tunnel_connections_and_bytes() -> None:
    async def fetch(port: int) -> str:
        return local.addr

    server = Server()
    async with (
        LocalServer(echo_handler()) as local,
        Tunnel(server=server, client_kwargs={"fetch_local_addr": fetch}) as t,
    ):
        listener, port = await admin_for(server)
        _, tcp_port = await server.add_addr("127.0.0.1:0", t.identifier)
        for _ in range(2):
            assert await exchange(tcp_port, b"hello tcp") == b"hello tcp\n"
        label = f"tcp:{tcp_port}"
        await wait_until(lambda: metrics_of(server).hosts.get(label) is not None)
        await wait_until(lambda: metrics_of(server).hosts[label].received == 20)
        samples = await scrape(port)
        listener.close()
    assert value(samples, "ytun_tcp_connections_total") == 2
    assert value(samples, "ytun_bytes_received_total", host=label) == 20
    assert value(samples, "ytun_bytes_sent_total", host=label) == 20


async def test_host_labels_are_capped_and_unknown_hosts_share_one() -> None:
    server = Server(domain="example.com")
    for index in range(5):
        server.add_host(f"h{index}.example.com", f"ID-{index}")
    observer = TunnelMetrics(server, max_hosts=3)
    for index in range(5):
        observer.request("-", f"h{index}.example.com".encode(), b"GET", b"/", 200, 10, 5, 0.0)
    for name in (b"x.h0.example.com:8080", b"H0.Example.Com"):  # deeper name, any case
        observer.request("-", name, b"GET", b"/", 200, 10, 5, 0.0)
    for _ in range(50):
        made_up = secrets.token_hex(8).encode() + b".example.com"
        observer.request("-", made_up, b"GET", b"/" + made_up, 502, 10, 5, 0.0)
    samples = parse(observer.exposition()[0].decode())
    hosts = {dict(key[1])["host"] for key in samples if key[0] == "ytun_requests_total"}
    assert hosts == {"h0.example.com", "h1.example.com", "h2.example.com", "other", "-"}
    assert value(samples, "ytun_requests_total", host="other", code="2xx") == 2
    assert value(samples, "ytun_requests_total", host="h0.example.com", code="2xx") == 3
    assert value(samples, "ytun_requests_total", host="-", code="5xx") == 50


async def test_a_host_is_labelled_again_after_its_route_changes() -> None:
    server = Server()
    observer = TunnelMetrics(server)
    observer.request("-", b"late.test", b"GET", b"/", 502, 10, 5, 0.0)
    server.add_host("late.test", "LATE-ID")
    observer.exposition()  # a scrape forgets what Host values meant
    observer.request("-", b"late.test", b"GET", b"/", 200, 10, 5, 0.0)
    samples = parse(observer.exposition()[0].decode())
    assert value(samples, "ytun_requests_total", host="-", code="5xx") == 1
    assert value(samples, "ytun_requests_total", host="late.test", code="2xx") == 1


async def test_two_servers_have_their_own_registries_and_none_is_global() -> None:
    first, second = Server(), Server()
    first.add_host("a.test", "A-ID")
    second.add_host("a.test", "B-ID")
    one, two = TunnelMetrics(first), TunnelMetrics(second)
    one.request("-", b"a.test", b"GET", b"/", 200, 10, 5, 0.0)
    for _ in range(3):
        two.request("-", b"a.test", b"GET", b"/", 500, 10, 5, 0.0)
    first_samples = parse(one.exposition()[0].decode())
    second_samples = parse(two.exposition()[0].decode())
    assert value(first_samples, "ytun_requests_total", host="a.test", code="2xx") == 1
    assert value(first_samples, "ytun_requests_total", host="a.test", code="5xx") == 0
    assert value(second_samples, "ytun_requests_total", host="a.test", code="5xx") == 3
    global_text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "ytun_" not in global_text


async def test_metrics_sit_behind_the_guard_and_health_does_not() -> None:
    server = Server()
    await server.serve("127.0.0.1", 0)
    listener, port = await admin_for(server)
    assert (await http_get(port, "/metrics", token=None))[0] == 401
    assert (await http_get(port, "/metrics", token="wrong"))[0] == 401
    for path in ("/healthz", "/readyz"):
        status, content_type, _ = await http_get(port, path, token=None)
        assert (status, content_type) == (200, "application/json")
    listener.close()
    await server.close(grace=0)


async def test_without_prometheus_client_metrics_answer_how_to_install_it(monkeypatch) -> None:
    for name in [name for name in sys.modules if name.startswith("prometheus_client")]:
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    server = Server()
    await server.serve("127.0.0.1", 0)
    listener, port = await admin_for(server)
    status, _, body = await http_get(port, "/metrics")
    assert status == 501
    assert body.decode() == metrics.INSTALL_HINT
    assert "pip install 'ytun[metrics]'" in body.decode()
    assert (await http_get(port, "/healthz"))[0] == 200  # the rest goes on
    listener.close()
    await server.close(grace=0)


async def test_health_and_readiness_follow_the_listener() -> None:
    server = Server()
    listener, port = await admin_for(server)
    status, _, body = await http_get(port, "/healthz")
    assert (status, json.loads(body)) == (503, {"status": "not listening"})
    status, _, body = await http_get(port, "/readyz")
    assert (status, json.loads(body)) == (503, {"status": "not ready", "reason": "not listening"})
    await server.serve("127.0.0.1", 0)
    status, _, body = await http_get(port, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, _, body = await http_get(port, "/readyz")
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    await server.close(grace=0)
    assert (await http_get(port, "/healthz"))[0] == 503
    listener.close()


async def test_readiness_reports_an_unusable_registry_and_failing_checks(tmp_path) -> None:
    registry = SqliteRegistry(tmp_path / "state.db")
    server = Server(registry=registry)
    await server.serve("127.0.0.1", 0)
    listener, port = await admin_for(server)
    assert (await http_get(port, "/readyz"))[0] == 200
    registry.close()
    server.add_readiness_check(lambda: "redis: connection refused")
    server.add_readiness_check(lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    status, _, body = await http_get(port, "/readyz")
    assert status == 503
    reason = json.loads(body)["reason"]
    assert reason == (
        "registry: the state file is closed; redis: connection refused; "
        "readiness check failed: ZeroDivisionError"
    )
    assert str(tmp_path) not in reason  # a public probe is not told where files are
    assert (await http_get(port, "/healthz"))[0] == 200  # live, only not ready
    listener.close()
    await server.close(grace=0)


@pytest.mark.parametrize("installed", [True, False], ids=["with", "without"])
def test_a_server_process_serves_metrics_with_or_without_prometheus_client(
    installed: bool,
) -> None:
    """A separate interpreter, where prometheus_client never was imported (or cannot be):
    the server runs either way and /metrics says what it can."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys, urllib.request, urllib.error
        if not {installed}:
            sys.modules["prometheus_client"] = None
        from ytun import Server
        from ytun.control import web
        from ytun.control.metrics import add_metrics_routes

        async def main():
            server = Server()
            await server.serve("127.0.0.1", 0)
            router = web.Router()
            add_metrics_routes(router, server)
            listener = await web.serve(router, "127.0.0.1", 0)
            port = listener.sockets[0].getsockname()[1]
            def get(path):
                try:
                    url = f"http://127.0.0.1:{{port}}{{path}}"
                    with urllib.request.urlopen(url, timeout=5) as r:
                        return r.status, r.read().decode()
                except urllib.error.HTTPError as error:
                    return error.code, error.read().decode()
            for path in ("/healthz", "/metrics"):
                status, body = await asyncio.to_thread(get, path)
                print(path, status, body.splitlines()[0] if body else "")
            listener.close()
            await server.close(grace=0)

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == '/healthz 200 {"status":"ok"}'
    if installed:
        assert lines[1].startswith("/metrics 200 # HELP ")
    else:
        assert lines[1] == "/metrics 501 " + metrics.INSTALL_HINT.strip()


async def test_a_scrape_formats_in_a_thread_from_a_copy_taken_in_the_loop() -> None:
    """prometheus_client is slow with many hosts: the tunnel's loop only copies counts."""
    server = Server()
    server.add_host("a.test", "A-ID")
    await server.serve("127.0.0.1", 0)
    router = web.Router()
    observer = add_metrics_routes(router, server)
    listener = await web.serve(router, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    observer.request("-", b"a.test", b"GET", b"/", 200, 10, 5, 0.0)
    threads = []
    collect = observer.collect

    def recording_collect():  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        observer.request("-", b"a.test", b"GET", b"/", 200, 10, 5, 0.0)  # after the copy
        yield from collect()

    observer.collect = recording_collect  # type: ignore[method-assign]
    status, _, body = await http_get(port, "/metrics")
    listener.close()
    await server.close(grace=0)
    assert status == 200
    assert threads and threads[0] != threading.get_ident()
    samples = parse(body.decode())
    assert value(samples, "ytun_requests_total", host="a.test", code="2xx") == 1  # the copy
    assert observer.hosts["a.test"].codes[2] == 2


async def test_counters_of_another_layer_are_read_at_each_scrape() -> None:
    server = Server()
    await server.serve("127.0.0.1", 0)
    router = web.Router()
    observer = add_metrics_routes(router, server)
    things = {"count": 3}
    observer.add_counters(lambda: {"ytun_test_things": ("Things seen.", things["count"])})
    listener = await web.serve(router, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    first = await http_get(port, "/metrics")
    things["count"] = 5
    second = await scrape(port)
    listener.close()
    await server.close(grace=0)
    assert "# HELP ytun_test_things_total Things seen.\n" in first[2].decode()
    assert value(parse(first[2].decode()), "ytun_test_things_total") == 3
    assert value(second, "ytun_test_things_total") == 5
