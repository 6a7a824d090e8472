"""The admin API from the command line, as real processes: ``ytun server --admin`` (with
and without a token, refused beyond loopback without one), ``ytun hosts|tcp|clients``
against it, ``ytun client --register`` end to end through a real tunnel to a local
origin (for one run, or kept in an identifier file), and a host added through the API
surviving a real server restart on ``--state``."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys

import pytest
import test_cli
from test_cli import ENV, STARTUP, Ytun, free_port
from test_state_cli import get, get_when_routed, start_client

# The subprocess and origin fixtures of the command-line tests.
ytun_cli = test_cli.ytun_cli
origin = test_cli.origin
tcp_echo = test_cli.tcp_echo

TOKEN = "admin-T0KEN-cli-93c2f1"
DOMAIN = "tunnel.test"
WITH_TOKEN = {"YTUN_ADMIN_TOKEN": TOKEN}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One short ``python -m ytun`` command, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "ytun", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(ENV, **(env or {})),
        check=False,
    )


def start_server(ytun_cli, *args: str, env: dict[str, str] | None = None) -> tuple[Ytun, int, str]:
    """A server with its admin API on loopback; (process, public port, admin URL)."""
    port, admin_port = free_port(), free_port()
    server = ytun_cli(
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        f"127.0.0.1:{admin_port}",
        "--domain",
        DOMAIN,
        *args,
        env=env,
    )
    server.wait_for(server.stdout, "ytun admin API on")
    return server, port, f"http://127.0.0.1:{admin_port}"


def fields(stdout: str) -> dict[str, str]:
    """``name: value`` lines of an ``add`` command."""
    return {
        name.strip(): value.strip()
        for name, _, value in (line.partition(":") for line in stdout.splitlines())
    }


# -- ytun server --admin -----------------------------------------------------------------


def test_hosts_add_ls_rm_against_an_open_loopback_api(ytun_cli) -> None:
    server, port, url = start_server(ytun_cli)
    line = server.wait_for(server.stdout, "ytun admin API on")
    assert "no token: open to every user of this machine" in line

    added = run("hosts", "add", "App.test", "--admin", url)
    assert added.returncode == 0, added.stderr
    shown = fields(added.stdout)
    assert shown["host"] == "app.test"
    assert shown["url"] == f"http://app.test:{port}/"
    assert len(shown["identifier"]) >= 43
    assert "secret" in added.stderr and "not shown again" in added.stderr

    taken = run("hosts", "add", "app.test", "--admin", url)
    assert taken.returncode == 1
    assert taken.stderr.strip() == "ytun hosts: that host is already taken"

    sub = run("hosts", "add", "--subdomain", "web", "--json", "--admin", url)
    assert json.loads(sub.stdout)["host"] == f"web.{DOMAIN}"
    random = json.loads(run("hosts", "add", "--json", "--admin", url).stdout)
    assert random["host"].endswith(f".{DOMAIN}")

    listed = run("hosts", "ls", "--admin", url)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["HOST", "CLIENT", "CONNECTED", "URL"]
    assert ["app.test", "app.test", "no", f"http://app.test:{port}/"] in [
        line.split() for line in lines
    ]
    as_json = json.loads(run("hosts", "ls", "--json", "--admin", url).stdout)
    assert {h["host"] for h in as_json["hosts"]} == {"app.test", f"web.{DOMAIN}", random["host"]}

    removed = run("hosts", "rm", "app.test", "--admin", url)
    assert (removed.returncode, removed.stdout.strip()) == (0, "deleted host app.test")
    again = run("hosts", "rm", "app.test", "--admin", url)
    assert again.returncode == 1 and "no such host: app.test" in again.stderr

    bad = run("hosts", "add", "http://x.test/", "--admin", url)
    assert bad.returncode == 1 and "no scheme" in bad.stderr
    both = run("hosts", "add", "x.test", "--subdomain", "x", "--admin", url)
    assert both.returncode == 2 and "not both" in both.stderr
    assert shown["identifier"] not in server.output()
    assert random["identifier"] not in server.output()


def test_a_token_is_needed_once_the_server_has_one(ytun_cli, tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    server, _, url = start_server(ytun_cli, "--admin-token-file", str(token_file))
    assert "(bearer token required)" in server.wait_for(server.stdout, "ytun admin API on")

    without = run("hosts", "ls", "--admin", url)
    assert without.returncode == 1
    assert "a bearer token is needed" in without.stderr and "--token-file" in without.stderr
    wrong = run("hosts", "ls", "--admin", url, env={"YTUN_ADMIN_TOKEN": TOKEN + "x"})
    assert wrong.returncode == 1 and "not valid" in wrong.stderr

    from_env = run("hosts", "add", "a.test", "--admin", url, env=WITH_TOKEN)
    assert from_env.returncode == 0, from_env.stderr
    from_file = run("hosts", "ls", "--admin", url, "--token-file", str(token_file))
    assert from_file.returncode == 0 and "a.test" in from_file.stdout
    for process in (without, wrong, from_env, from_file):
        assert TOKEN not in process.stdout + process.stderr
    assert TOKEN not in server.output()
    assert fields(from_env.stdout)["identifier"] not in server.output()


def test_the_token_may_come_from_the_environment_or_the_config_file(
    ytun_cli, tmp_path: pathlib.Path
) -> None:
    server, _, url = start_server(ytun_cli, env=WITH_TOKEN)
    assert "(bearer token required)" in server.wait_for(server.stdout, "ytun admin API on")
    assert run("clients", "--admin", url).returncode == 1
    assert run("clients", "--admin", url, env=WITH_TOKEN).returncode == 0

    (tmp_path / "admin.token").write_text(TOKEN)
    port, admin_port = free_port(), free_port()
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nadmin = "127.0.0.1:{admin_port}"\n'
        'admin_token_file = "admin.token"\n'
    )
    from_config = ytun_cli("server", "--config", str(config))
    line = from_config.wait_for(from_config.stdout, "ytun admin API on")
    assert (
        line.strip() == f"ytun admin API on http://127.0.0.1:{admin_port} (bearer token required)"
    )
    second_url = f"http://127.0.0.1:{admin_port}"
    assert run("hosts", "ls", "--admin", second_url).returncode == 1
    assert run("hosts", "ls", "--admin", second_url, env=WITH_TOKEN).returncode == 0


@pytest.mark.parametrize("where", ["0.0.0.0:{port}", ":{port}", "192.0.2.1:{port}"])
def test_an_admin_api_beyond_loopback_without_a_token_is_refused(ytun_cli, where: str) -> None:
    admin = where.format(port=free_port())
    server = ytun_cli("server", "--listen", f"127.0.0.1:{free_port()}", "--admin", admin)
    assert server.finish(STARTUP) == 2
    [line] = server.stderr
    assert line.startswith(f"ytun server: --admin {admin} is reachable from other machines")
    assert "--admin-token-file" in line and "YTUN_ADMIN_TOKEN" in line
    assert not server.stdout


def test_admin_address_mistakes_end_the_server_with_the_reason(
    ytun_cli, tmp_path: pathlib.Path
) -> None:
    port = free_port()
    same = ytun_cli("server", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{port}")
    assert same.finish(STARTUP) == 2
    assert "needs its own" in "".join(same.stderr)

    lonely = ytun_cli("server", "--admin-token-file", str(tmp_path / "none"))
    assert lonely.finish(STARTUP) == 2
    assert "--admin-token-file goes with --admin" in "".join(lonely.stderr)

    missing = ytun_cli(
        "server", "--admin", f"127.0.0.1:{free_port()}", "--admin-token-file", str(tmp_path / "x")
    )
    assert missing.finish(STARTUP) == 2
    assert "cannot read --admin-token-file" in "".join(missing.stderr)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        taken = ytun_cli(
            "server", "--listen", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{busy_port}"
        )
        assert taken.finish(STARTUP) == 1
    assert f"cannot listen on the admin address 127.0.0.1:{busy_port}" in "".join(taken.stderr)


def test_commands_say_when_the_admin_api_cannot_be_reached() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("hosts", "ls"), ("tcp", "ls"), ("clients",), ("hosts", "add", "a.test")):
        result = run(*args, "--admin", url)
        assert result.returncode == 1
        assert f"cannot reach the admin API at {url}" in result.stderr
        assert "is the server running with --admin?" in result.stderr
    bad = run("hosts", "ls", "--admin", "ftp://127.0.0.1:1")
    assert bad.returncode == 2 and "http://" in bad.stderr


def test_a_web_server_that_is_not_the_admin_api_is_said_so(origin) -> None:
    result = run("hosts", "ls", "--admin", f"http://127.0.0.1:{origin}")
    assert result.returncode == 1
    assert "without JSON" in result.stderr


# -- TCP routes and clients --------------------------------------------------------------


def test_tcp_add_through_the_cli_tunnels_to_a_real_client(ytun_cli, tcp_echo) -> None:
    server, port, url = start_server(ytun_cli)
    added = run("tcp", "add", "0", "--admin", url)
    assert added.returncode == 0, added.stderr
    shown = fields(added.stdout)
    public_port = int(shown["port"])
    assert shown["addr"] == f"127.0.0.1:{public_port}"
    client = ytun_cli(
        "client",
        "--server",
        f"127.0.0.1:{port}",
        "--tcp-local",
        f"{public_port}=127.0.0.1:{tcp_echo}",
        env={"YTUN_IDENTIFIER": shown["identifier"]},
    )
    client.wait_for(client.stderr, "tunnel connected")
    with socket.create_connection(("127.0.0.1", public_port), timeout=10) as connection:
        connection.sendall(b"hello\n")
        assert connection.makefile("rb").readline() == b"echo: hello\n"

    listed = run("tcp", "ls", "--admin", url).stdout.splitlines()
    assert listed[0].split() == ["ROUTE", "CLIENT", "CONNECTED"]
    assert listed[1].split() == [f":{public_port}", f"tcp:{public_port}", "yes"]
    clients = run("clients", "--admin", url).stdout.splitlines()
    assert clients[0].split()[:3] == ["LABEL", "PEER", "SINCE"]
    assert clients[1].split()[0] == f"tcp:{public_port}"

    assert run("tcp", "rm", str(public_port), "--admin", url).returncode == 0
    assert run("tcp", "ls", "--admin", url).stdout.strip() == "no tcp"
    again = run("tcp", "rm", str(public_port), "--admin", url)
    assert again.returncode == 1 and "no such TCP route" in again.stderr
    assert shown["identifier"] not in server.output()


# -- ytun client --register --------------------------------------------------------------


def test_register_for_one_run_serves_through_the_tunnel_then_deletes_its_host(
    ytun_cli, origin
) -> None:
    server, port, url = start_server(ytun_cli, env=WITH_TOKEN)
    client = ytun_cli(
        "client",
        "--server",
        f"127.0.0.1:{port}",
        "--register",
        url,
        "--subdomain",
        "web",
        "--local",
        f"127.0.0.1:{origin}",
        env=WITH_TOKEN,
    )
    line = client.wait_for(client.stdout, "public URL")
    host = f"web.{DOMAIN}"
    assert line.strip() == f"ytun client: public URL http://{host}:{port}/"
    client.wait_for(client.stderr, "tunnel connected")
    assert get_when_routed(port, f"{host}:{port}", "/reg") == (
        200,
        f"origin says /reg to {host}:{port}",
    )
    listed = run("hosts", "ls", "--admin", url, env=WITH_TOKEN)
    assert [host, host, "yes"] in [line.split()[:3] for line in listed.stdout.splitlines()]

    code, _ = client.stop(signal.SIGTERM, timeout=STARTUP)
    assert code == 0
    assert "deleted the host web.tunnel.test registered for this run" in client.output()
    left = run("hosts", "ls", "--admin", url, env=WITH_TOKEN)
    assert left.stdout.strip() == "no hosts"
    assert TOKEN not in client.output() + server.output()


def test_register_keeps_the_identifier_in_its_file_across_runs(
    ytun_cli, origin, tmp_path: pathlib.Path
) -> None:
    server, port, url = start_server(ytun_cli)
    identifier_file = tmp_path / "id"
    args = (
        "client",
        "--server",
        f"127.0.0.1:{port}",
        "--register",
        url,
        "--identifier-file",
        str(identifier_file),
        "--local",
        f"127.0.0.1:{origin}",
    )
    first = ytun_cli(*args)
    host = first.wait_for(first.stdout, "public URL").split("//")[1].split(":")[0]
    first.wait_for(first.stderr, "tunnel connected")
    assert stat.S_IMODE(os.stat(identifier_file).st_mode) == 0o600
    identifier = identifier_file.read_text().strip()
    assert len(identifier) >= 43 and identifier not in first.output() + server.output()
    assert get_when_routed(port, f"{host}:{port}")[0] == 200
    assert first.stop(signal.SIGTERM, timeout=STARTUP)[0] == 0

    second = ytun_cli(*args)
    line = second.wait_for(second.stdout, "ytun client:")
    assert f"using the identifier in {identifier_file}" in line
    second.wait_for(second.stderr, "tunnel connected")
    assert get_when_routed(port, f"{host}:{port}", "/again") == (
        200,
        f"origin says /again to {host}:{port}",
    )
    assert identifier_file.read_text().strip() == identifier
    assert second.stop(signal.SIGTERM, timeout=STARTUP)[0] == 0
    assert host in run("hosts", "ls", "--admin", url).stdout  # kept: the file names it


def test_register_failures_end_the_client_with_the_reason(ytun_cli, tmp_path: pathlib.Path) -> None:
    _, port, url = start_server(ytun_cli, env=WITH_TOKEN)
    base = ("client", "--server", f"127.0.0.1:{port}")
    wrong = ytun_cli(*base, "--register", url, env={"YTUN_ADMIN_TOKEN": "wrong"})
    assert wrong.finish(STARTUP) == 1
    assert "ytun client: the bearer token is not valid" in "".join(wrong.stderr)

    taken = run("hosts", "add", "--subdomain", "web", "--admin", url, env=WITH_TOKEN)
    assert taken.returncode == 0
    duplicate = ytun_cli(*base, "--register", url, "--subdomain", "web", env=WITH_TOKEN)
    assert duplicate.finish(STARTUP) == 1
    assert "that host is already taken" in "".join(duplicate.stderr)

    gone = ytun_cli(*base, "--register", f"http://127.0.0.1:{free_port()}")
    assert gone.finish(STARTUP) == 1
    assert "cannot reach the admin API" in "".join(gone.stderr)

    for args, reason in [
        (("--register", url, "--identifier", "x"), "drop --identifier"),
        (("--subdomain", "web", "--identifier", "x"), "go with --register"),
        (("--register", "ftp://x"), "http://"),
        (("--register", url, "--subdomain", "a.b"), "single label"),
        (("--register", url, "--identifier-file", str(tmp_path / "no" / "id")), "does not exist"),
    ]:
        usage = ytun_cli(*base, *args)
        assert usage.finish(STARTUP) == 2, args
        assert reason in "".join(usage.stderr), (args, usage.output())


# -- persistence -------------------------------------------------------------------------


def test_a_host_added_through_the_api_survives_a_restart_on_state(
    ytun_cli, origin, tmp_path: pathlib.Path
) -> None:
    state = tmp_path / "ytun.db"
    port, admin_port = free_port(), free_port()
    server_args = (
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        f"127.0.0.1:{admin_port}",
        "--state",
        str(state),
    )
    url = f"http://127.0.0.1:{admin_port}"
    first = ytun_cli(*server_args)
    first.wait_for(first.stdout, "ytun admin API on")
    added = run("hosts", "add", "kept.test", "--admin", url)
    identifier = fields(added.stdout)["identifier"]
    first.stop(signal.SIGKILL)  # no clean close: the 201 came after the change was stored

    second = ytun_cli(*server_args)
    second.wait_for(second.stdout, "ytun admin API on")
    assert "kept.test" in run("hosts", "ls", "--admin", url).stdout
    start_client(ytun_cli, port, identifier, origin)
    assert get_when_routed(port, "kept.test") == (200, "origin says /x to kept.test")
    assert identifier.encode() not in state.read_bytes()
    assert get(port, "other.test")[0] == 502


def test_a_tcp_route_added_through_the_api_is_listened_on_again_after_a_restart(
    ytun_cli, tcp_echo, tmp_path: pathlib.Path
) -> None:
    state = tmp_path / "ytun.db"
    port, admin_port, tcp_port = free_port(), free_port(), free_port()
    server_args = (
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        f"127.0.0.1:{admin_port}",
        "--state",
        str(state),
    )
    url = f"http://127.0.0.1:{admin_port}"
    first = ytun_cli(*server_args)
    first.wait_for(first.stdout, "ytun admin API on")
    added = run("tcp", "add", str(tcp_port), "--admin", url)
    assert added.returncode == 0, added.stderr
    identifier = fields(added.stdout)["identifier"]
    first.stop(signal.SIGKILL)

    second = ytun_cli(*server_args, "--log-level", "info")
    second.wait_for(second.stdout, "ytun admin API on")
    second.wait_for(second.stderr, f"listening again on the stored TCP route :{tcp_port}")
    client = ytun_cli(
        "client",
        "--server",
        f"127.0.0.1:{port}",
        "--tcp-local",
        f"{tcp_port}=127.0.0.1:{tcp_echo}",
        env={"YTUN_IDENTIFIER": identifier},
    )
    client.wait_for(client.stderr, "tunnel connected")
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as connection:
        connection.sendall(b"kept\n")
        assert connection.makefile("rb").readline() == b"echo: kept\n"
    assert identifier not in second.output()


def test_the_admin_listener_serves_metrics_and_health_probes(ytun_cli, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-admin-token\n")
    server, _, url = start_server(ytun_cli, "--admin-token-file", str(token_file))
    base = url.removeprefix("http://")
    host, admin_port = base.rsplit(":", 1)

    def fetch(path: str, token: str | None = None) -> tuple[int, str]:
        import http.client

        connection = http.client.HTTPConnection(host, int(admin_port), timeout=10)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        body = answer.read().decode()
        connection.close()
        return answer.status, body

    assert fetch("/healthz")[0] == 200  # probes need no token
    assert fetch("/readyz")[0] == 200
    assert fetch("/metrics")[0] == 401
    status, text = fetch("/metrics", "s3cret-admin-token")
    assert status == 200
    from prometheus_client.parser import text_string_to_metric_families

    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"ytun_clients_connected", "ytun_requests"} <= names
    assert "s3cret-admin-token" not in server.output()
