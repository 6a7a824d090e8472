"""``ytun client --inspect``: the flags, the config keys, the loopback rule, as real
subprocesses on loopback."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from test_cli import SECRET, STARTUP, free_port, one_line, origin, start_pair, ytun_cli

from ytun.settings import ConfigError, load_client_file

__all__ = ["origin", "ytun_cli"]  # fixtures shared with test_cli

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, host: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    with NO_PROXY.open(request, timeout=10) as response:
        return response.read()


def test_the_client_serves_the_inspector_with_its_limits(ytun_cli, origin):
    port, inspect_port = free_port(), free_port()
    _, client = start_pair(
        ytun_cli,
        port,
        "--local",
        f"127.0.0.1:{origin}",
        "--inspect",
        f"127.0.0.1:{inspect_port}",
        "--inspect-max-requests",
        "2",
        "--inspect-body-limit",
        "5",
    )
    client.wait_for(client.stdout, f"ytun inspector on http://127.0.0.1:{inspect_port}/")
    for index in range(3):
        body = get(f"http://127.0.0.1:{port}/r{index}", f"app.test:{port}")
        assert body.startswith(f"origin says /r{index}".encode())
    listing = json.loads(get(f"http://127.0.0.1:{inspect_port}/api/requests"))
    assert (listing["max_entries"], listing["body_limit"]) == (2, 5)
    assert [entry["path"] for entry in listing["requests"]] == ["/r2", "/r1"]
    newest = json.loads(get(f"http://127.0.0.1:{inspect_port}/api/requests/3"))
    assert newest["response"]["body"]["text"] == "origi"
    assert newest["response"]["body"]["truncated"] is True
    assert b"ytun inspector" in get(f"http://127.0.0.1:{inspect_port}/")
    code, _ = client.stop()
    assert code == 0
    assert SECRET not in client.output()


@pytest.mark.parametrize("address", ["0.0.0.0:{port}", ":{port}", "example.com:{port}"])
def test_a_remote_inspector_address_needs_the_explicit_flag(ytun_cli, address):
    process = ytun_cli(
        "client",
        "--server",
        "127.0.0.1:1",
        "--identifier",
        SECRET,
        "--inspect",
        address.format(port=free_port()),
    )
    assert process.finish(STARTUP) == 2
    line = one_line("".join(process.stderr))
    assert line.startswith("ytun client: --inspect") and "--inspect-allow-remote" in line


def test_a_remote_inspector_is_warned_about(ytun_cli, origin):
    port, inspect_port = free_port(), free_port()
    _, client = start_pair(
        ytun_cli,
        port,
        "--local",
        f"127.0.0.1:{origin}",
        "--inspect",
        f"0.0.0.0:{inspect_port}",
        "--inspect-allow-remote",
    )
    client.wait_for(client.stderr, "reachable from other machines")
    assert json.loads(get(f"http://127.0.0.1:{inspect_port}/api/requests"))["requests"] == []


def test_a_busy_inspector_port_ends_the_client_with_one_line(ytun_cli):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = ytun_cli(
            "client",
            "--server",
            "127.0.0.1:1",
            "--identifier",
            SECRET,
            "--inspect",
            f"127.0.0.1:{port}",
        )
        assert process.finish(STARTUP) == 1
    line = one_line("".join(process.stderr))
    assert line.startswith("ytun client: cannot serve the inspector") and "in use" in line


def test_the_config_keys(ytun_cli, origin, tmp_path):
    inspect_port = free_port()
    config = tmp_path / "client.toml"
    config.write_text(
        f'[client]\ninspect = "127.0.0.1:{inspect_port}"\ninspect_max_requests = 7\n'
        "inspect_body_limit = 0\ninspect_allow_remote = false\n"
    )
    loaded = load_client_file(config)
    assert (loaded.inspect, loaded.inspect_max_requests, loaded.inspect_body_limit) == (
        f"127.0.0.1:{inspect_port}",
        7,
        0,
    )
    port = free_port()
    _, client = start_pair(
        ytun_cli, port, "--local", f"127.0.0.1:{origin}", "--config", str(config)
    )
    client.wait_for(client.stdout, f"ytun inspector on http://127.0.0.1:{inspect_port}/")
    listing = json.loads(get(f"http://127.0.0.1:{inspect_port}/api/requests"))
    assert (listing["max_entries"], listing["body_limit"]) == (7, 0)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("inspect_body_limit = -1", "inspect_body_limit"),
        ("inspect_max_requests = 0", "inspect_max_requests"),
        ('inspect = "4040"', "inspect"),
        ('inspect_allow_remote = "yes"', "inspect_allow_remote"),
    ],
)
def test_bad_config_keys_are_named(tmp_path, text, named):
    config = tmp_path / "client.toml"
    config.write_text(f"[client]\n{text}\n")
    with pytest.raises(ConfigError, match=named):
        load_client_file(config)
