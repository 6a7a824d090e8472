"""``ytun server --state FILE`` and ``--domain NAME`` as real processes: a server killed
and started again with only ``--state`` routes the same client, which reconnected by
itself; the file holds no identifier; an unusable state file or domain ends the server at
once with the reason; the config file keys ``state`` and ``domain``."""

from __future__ import annotations

import http.client
import pathlib
import time

import test_cli
from test_cli import STARTUP, Ytun, free_port

# The subprocess and origin fixtures of the command-line tests.
ytun_cli = test_cli.ytun_cli
origin = test_cli.origin

SECRET = "S3CRET-state-identifier-5c1d"


def get(port: int, host: str, path: str = "/x") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def get_when_routed(port: int, host: str, path: str = "/x") -> tuple[int, str]:
    """The first answer that is not the 502 of a client still reconnecting."""
    deadline = time.monotonic() + STARTUP * 2
    while True:
        try:
            status, body = get(port, host, path)
        except OSError:
            status, body = 0, ""
        if status == 200 or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


def start_client(ytun_cli, port: int, identifier: str, origin: int) -> Ytun:
    """``ytun client`` for the server on ``port``, forwarding to ``origin``; connected."""
    client = ytun_cli(
        "client",
        "--server",
        f"127.0.0.1:{port}",
        "--local",
        f"127.0.0.1:{origin}",
        env={"YTUN_IDENTIFIER": identifier},
    )
    client.wait_for(client.stderr, "tunnel connected")
    return client


def start_server(ytun_cli, port: int, *args: str) -> Ytun:
    server = ytun_cli("server", "--listen", f"127.0.0.1:{port}", *args)
    server.wait_for(server.stdout, f"ytun server listening on http://127.0.0.1:{port}")
    return server


def test_a_killed_server_restarted_with_only_its_state_routes_the_client_again(
    ytun_cli, origin, tmp_path: pathlib.Path
) -> None:
    port = free_port()
    state = tmp_path / "ytun.db"
    first = start_server(ytun_cli, port, "--state", str(state), "--host", f"app.test={SECRET}")
    client = start_client(ytun_cli, port, SECRET, origin)
    assert get_when_routed(port, f"app.test:{port}") == (200, f"origin says /x to app.test:{port}")

    first.kill()  # SIGKILL: no goodbye, no clean close of the state file
    second = start_server(ytun_cli, port, "--state", str(state))
    client.wait_for_count(client.stderr, "tunnel connected", 2, timeout=STARTUP * 2)
    status, body = get_when_routed(port, f"app.test:{port}", "/again")
    assert (status, body) == (200, f"origin says /again to app.test:{port}")
    assert client.process.poll() is None
    assert SECRET not in second.output() and SECRET not in first.output()
    stored = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())
    assert b"app.test" in stored and SECRET.encode() not in stored


def test_domain_routes_names_below_a_stored_subdomain(
    ytun_cli, origin, tmp_path: pathlib.Path
) -> None:
    port = free_port()
    state = tmp_path / "ytun.db"
    config = tmp_path / "server.toml"
    (tmp_path / "app.identifier").write_text(SECRET + "\n")
    config.write_text(
        '[server]\nstate = "ytun.db"\ndomain = "Tunnel.Test"\n'
        '[server.hosts]\n"app.tunnel.test" = { identifier_file = "app.identifier" }\n'
    )
    start_server(ytun_cli, port, "--config", str(config))
    assert state.exists()  # relative to the config file
    start_client(ytun_cli, port, SECRET, origin)
    host = f"api.app.tunnel.test:{port}"
    assert get_when_routed(port, host) == (200, f"origin says /x to {host}")
    assert get(port, "nobody.tunnel.test") == (
        502,
        'no virtual host available for "nobody.tunnel.test"\n',
    )


def test_a_corrupt_state_file_ends_the_server_with_the_reason(
    ytun_cli, tmp_path: pathlib.Path
) -> None:
    state = tmp_path / "ytun.db"
    state.write_bytes(b"not a database at all\n" * 300)
    server = ytun_cli("server", "--listen", f"127.0.0.1:{free_port()}", "--state", str(state))
    assert server.finish(STARTUP) == 1
    errors = "".join(server.stderr).strip().splitlines()
    assert errors[-1].startswith(f"ytun server: state file {state}: file is not a database")
    assert "Traceback" not in server.output()
    assert state.read_bytes() == b"not a database at all\n" * 300


def test_a_state_file_in_use_ends_a_second_server(ytun_cli, tmp_path: pathlib.Path) -> None:
    state = tmp_path / "ytun.db"
    start_server(ytun_cli, free_port(), "--state", str(state), "--host", f"a.test={SECRET}")
    second = ytun_cli("server", "--listen", f"127.0.0.1:{free_port()}", "--state", str(state))
    assert second.finish(STARTUP) == 1
    assert "another process" in "".join(second.stderr)


def test_a_bad_domain_is_a_usage_error(ytun_cli) -> None:
    server = ytun_cli("server", "--domain", "https://tunnel.test/")
    assert server.finish(STARTUP) == 2
    assert "--domain" in "".join(server.stderr)


def test_a_host_that_is_not_rfc_1123_is_a_usage_error(ytun_cli) -> None:
    server = ytun_cli("server", "--host", f"under_score.test={SECRET}")
    assert server.finish(STARTUP) == 2
    message = "".join(server.stderr)
    assert "'_'" in message and SECRET not in message
