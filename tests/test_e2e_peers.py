"""The end-to-end harness's built-in peers (``python -m benchmarks.e2e --peers …``).

One short run with OpenSSH remote forwarding, nginx and ytun over TLS next to direct and
ytun, checking that each column measured something and that nothing is left behind; and a
run whose programs are missing or broken, which must say so in its columns and go on. Not
performance tests: only that the harness works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import ytun

ROOT = Path(__file__).resolve().parents[1]
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])

pytestmark = [
    pytest.mark.skipif(
        not (ROOT / "benchmarks" / "e2e" / "__main__.py").exists()
        or Path(ytun.__file__).resolve().parent != ROOT / "ytun",
        reason="needs the source tree's ytun (the harness runs it), e.g. not in a wheel test",
    ),
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="the harness measures through /proc (Linux)"
    ),
]

LOAD = {"keepalive-c1", "keepalive-c32", "close-c1", "close-c32"}


def run_harness(out: Path, *flags: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.e2e",
            "--loadgen",
            "builtin",
            "--out",
            str(out),
            "--no-chart",
            *flags,
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def missing_programs() -> list[str]:
    return [p for p in ("sshd", "ssh", "ssh-keygen", "nginx") if not shutil.which(p, path=SBIN)]


@pytest.mark.timeout(200)
@pytest.mark.skipif(
    bool(missing_programs()),
    reason=f"needs {', '.join(missing_programs())} "
    "(apt-get install openssh-server openssh-client nginx)",
)
def test_quick_run_measures_ssh_nginx_and_tls_columns(tmp_path: Path) -> None:
    out = tmp_path / "e2e"
    completed = run_harness(out, "--quick", "--peers", "ytun-tls,ssh,nginx", timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]

    data = json.loads((out / "results.json").read_text())
    assert data["aborted"] is None
    assert list(data["targets"]) == ["direct", "ytun", "ytun-tls", "ssh", "nginx"]
    peers = ("ytun-tls", "ssh", "nginx")
    for name in peers:
        target = data["targets"][name]
        assert target["skipped"] is None and target["failure"] is None, target
    assert data["targets"]["ytun-tls"]["url"].startswith("https://")
    assert "aes128-gcm@openssh.com" in data["targets"]["ssh"]["commands"]["client"]
    assert " -R 127.0.0.1:" in data["targets"]["ssh"]["commands"]["client"]

    load = [s for s in data["scenarios"] if s["kind"] in ("keepalive", "close")]
    assert {s["id"] for s in load} == LOAD
    for scenario in load:
        for name in peers:
            result = scenario["results"][name]
            assert result["failed"] is None, (scenario["id"], name, result)
            assert result["rps"] > 0 and result["p50_ms"] is not None, (scenario["id"], name)
            assert result["errors"] == 0, (scenario["id"], name, result)
    for scenario in (s for s in data["scenarios"] if s["kind"] in ("download", "upload")):
        for name in peers:
            assert scenario["results"][name]["mb_per_s"] > 0, (scenario["id"], name)

    # sshd's work happens in the process it forks per connection, which leaves sshd's
    # session: the statistics must follow it there.
    processes = data["processes"]
    assert processes["ssh-server"]["cpu_s"] > 0, processes["ssh-server"]
    assert processes["ssh-client"]["cpu_s"] > 0
    assert processes["nginx-server"]["cpu_s"] > 0
    assert "nginx-client" not in processes
    for name in ("ytun-tls-server", "ssh-server", "nginx-server"):
        assert processes[name]["exit_status"] in (0, -15), (name, processes[name])

    markdown = (out / "results.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| scenario |"))
    assert header == (
        "| scenario | direct | ytun | ytun/direct | ytun-tls | ytun-tls/direct "
        "| ssh | ssh/direct | nginx | nginx/direct |"
    )
    row = next(line for line in markdown.splitlines() if "keep-alive, 32 conns: req/s" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert all(re.fullmatch(r"[\d.]+×", cell) for cell in cells[3::2]), row
    assert "worker_processes 1" in markdown

    # Nothing left behind: keys and configs removed, no forwarded or proxy port open.
    for name in peers:
        workdirs = set(re.findall(r"/tmp/ytun-e2e-[\w-]+", json.dumps(data["targets"][name])))
        assert workdirs, name
        assert not any(Path(d).exists() for d in workdirs), workdirs
        port = int(data["targets"][name]["url"].rsplit(":", 1)[1].strip("/"))
        assert not port_open(port), (name, port)
    assert (out / "logs" / "ssh-sshd_config").read_text().count("UsePAM no") == 1
    assert "keepalive 64;" in (out / "logs" / "nginx-nginx.conf").read_text()


@pytest.mark.timeout(120)
def test_missing_or_broken_program_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "e2e"
    completed = run_harness(
        out,
        "--peers",
        "nginx,ssh",
        "--nginx-bin",
        "/bin/false",  # there, but it exits at once: failed, not skipped
        "--sshd-bin",
        str(tmp_path / "no-such-sshd"),
        "--scenarios",
        "keepalive",
        "--connections",
        "1",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--ready-timeout",
        "10",
        timeout=100,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"ssh skipped: {tmp_path / 'no-such-sshd'} not found" in completed.stderr
    assert "nginx failed to start" in completed.stderr

    data = json.loads((out / "results.json").read_text())
    assert data["aborted"] is None
    assert list(data["targets"]) == ["direct", "ytun", "nginx", "ssh"]
    ssh, nginx = data["targets"]["ssh"], data["targets"]["nginx"]
    assert "no-such-sshd not found" in ssh["skipped"] and "openssh-server" in ssh["skipped"]
    assert nginx["skipped"] is None and "nginx-server exited" in nginx["failure"]
    (scenario,) = data["scenarios"]
    assert scenario["results"]["ssh"]["skipped"] == ssh["skipped"]
    assert scenario["results"]["nginx"]["failed"] == "target down"
    assert scenario["results"]["ytun"]["rps"] > 0  # the others were measured all the same

    markdown = (out / "results.md").read_text()
    row = next(line for line in markdown.splitlines() if "keep-alive, 1 conn: req/s" in line)
    assert row.count("skipped") == 2 and row.count("failed") == 1, row
    assert "- **ssh skipped**:" in markdown
    assert "- **nginx failed**:" in markdown
