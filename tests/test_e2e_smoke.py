"""Smoke test of the end-to-end benchmark harness (``python -m benchmarks.e2e --quick``).

It runs the real thing (origin, ``ytun server`` and ``ytun client`` subprocesses, the
built-in load generator) for about a second per scenario and only checks that every
column measured something: it is not a performance test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ytun

ROOT = Path(__file__).resolve().parents[1]

# The harness runs ``python -m ytun`` from the repository root, so it needs the ytun imported
# here to be that source tree (not an installed wheel next to a tree without a build).
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


@pytest.mark.timeout(90)
def test_quick_run_measures_direct_and_tunnel(tmp_path: Path) -> None:
    out = tmp_path / "e2e"
    # No working git (a release tarball, a bare machine): the harness must not need it.
    no_git = tmp_path / "bin"
    no_git.mkdir()
    (no_git / "git").write_text("#!/bin/sh\necho 'git: not installed here' >&2\nexit 127\n")
    (no_git / "git").chmod(0o755)
    path = f"{no_git}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PATH=path)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.e2e",
            "--quick",
            "--loadgen",
            "builtin",
            "--out",
            str(out),
            "--no-chart",
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    data = json.loads((out / "results.json").read_text())
    assert data["aborted"] is None
    assert data["meta"]["git"] == "?"
    assert set(data["targets"]) == {"direct", "ytun"}
    load = [s for s in data["scenarios"] if s["kind"] in ("keepalive", "close")]
    assert {s["id"] for s in load} == {"keepalive-c1", "keepalive-c32", "close-c1", "close-c32"}
    for scenario in load:
        for target in ("direct", "ytun"):
            result = scenario["results"][target]
            assert result["failed"] is None, (scenario["id"], target, result)
            assert result["rps"] > 0, (scenario["id"], target, result)
            assert result["p50_ms"] is not None
    for scenario in (s for s in data["scenarios"] if s["kind"] in ("download", "upload")):
        for target in ("direct", "ytun"):
            assert scenario["results"][target]["mb_per_s"] > 0, (scenario["id"], target)
    server = data["processes"]["ytun-server"]
    assert server["peak_rss_mb"] > 0 and server["cpu_s"] > 0
    assert server["exit_status"] == 0, server

    markdown = (out / "results.md").read_text()
    assert "| scenario | direct | ytun | ytun/direct |" in markdown
    assert "keep-alive, 32 conns: req/s" in markdown
