"""Drive the load generators (wrk, hey, the built-in one) and curl, and parse what they say.

Every driver returns a plain dict. Load runs: ``tool``, ``command``, ``requests``,
``seconds``, ``rps``, ``p50_ms``, ``p99_ms``, ``errors`` (= ``socket_errors`` + ``non_2xx``),
``error_detail`` and ``failed`` (why the tool itself failed, else None). Transfers:
``bytes``, ``seconds``, ``mb_per_s`` (10**6 bytes/s, as curl measures), ``status``, ``ok``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .procs import LOOPBACK, run_bounded

TOOLS = ("wrk", "hey")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass
class LoadSpec:
    port: int
    host: str | None  # Host header, None to send 127.0.0.1:port
    connections: int
    duration: float
    keepalive: bool = True
    threads: int = 2
    timeout: float = 30.0  # extra seconds past the duration before the tool is killed
    # https with this CA (wrk and hey do not verify certificates; the built-in one does)
    tls_ca: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://{LOOPBACK}:{self.port}/"


def pick_tool(wanted: str) -> str:
    """``auto`` → wrk, else hey, else builtin. An explicit tool must be installed."""
    if wanted == "auto":
        for tool in TOOLS:
            if shutil.which(tool):
                return tool
        return "builtin"
    if wanted != "builtin" and not shutil.which(wanted):
        raise SystemExit(
            f"--loadgen {wanted}: {wanted} is not installed "
            f"(benchmarks/e2e/setup.sh installs wrk and hey)"
        )
    return wanted


def tool_version(tool: str) -> str:
    if tool == "wrk":
        _, out, err = run_bounded(["wrk", "--version"], 10)
        return (out + err).splitlines()[0].strip() if (out + err).strip() else "wrk"
    if tool == "hey":
        return "hey (no version flag)"
    if tool == "curl":
        _, out, _ = run_bounded(["curl", "--version"], 10)
        return out.splitlines()[0] if out else "curl"
    return f"builtin (python {sys.version.split()[0]})"


def _empty(tool: str, command: list[str], failed: str | None = None) -> dict:
    return {
        "tool": tool,
        "command": shlex.join(command),
        "requests": 0,
        "seconds": 0.0,
        "rps": 0.0,
        "p50_ms": None,
        "p99_ms": None,
        "errors": 0,
        "socket_errors": 0,
        "non_2xx": 0,
        "error_detail": {},
        "failed": failed,
    }


def _run(tool: str, command: list[str], timeout: float, parse) -> dict:
    status, out, err = run_bounded(command, timeout)
    if status is None:
        return _empty(tool, command, f"timed out after {timeout:.0f} s") | {"raw": out[-4000:]}
    result = parse(out)
    result.update(tool=tool, command=shlex.join(command), raw=out[-4000:])
    if status != 0 or result.get("rps") is None:
        result["failed"] = f"exit status {status}: {(err or out).strip()[-500:]}"
        result["rps"] = result.get("rps") or 0.0
    else:
        result.setdefault("failed", None)
    return result


# -- wrk -------------------------------------------------------------------------------------


def wrk_command(spec: LoadSpec) -> list[str]:
    command = [
        "wrk",
        f"-t{max(1, min(spec.threads, spec.connections))}",
        f"-c{spec.connections}",
        f"-d{spec.duration:g}s",
        "--latency",
        "--timeout",
        "2s",
    ]
    if spec.host:
        command += ["-H", f"Host: {spec.host}"]
    if not spec.keepalive:
        command += ["-H", "Connection: close"]
    return [*command, spec.url]


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def _empty_result() -> dict:
    """What a parser reports before it found anything in the tool's output."""
    return {
        "requests": 0,
        "seconds": 0.0,
        "rps": None,
        "p50_ms": None,
        "p99_ms": None,
        "socket_errors": 0,
        "non_2xx": 0,
        "error_detail": {},
    }


def parse_wrk(text: str) -> dict:
    result = _empty_result()
    if match := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", text):
        result["requests"] = int(match[1])
        result["seconds"] = _ms(match[2], match[3]) / 1000
    if match := re.search(r"Requests/sec:\s+([\d.]+)", text):
        result["rps"] = float(match[1])
    for match in re.finditer(
        r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE
    ):
        result[f"p{match[1]}_ms"] = _ms(match[2], match[3])
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        detail = dict(
            zip(("connect", "read", "write", "timeout"), map(int, match.groups()), strict=True)
        )
        result["socket_errors"] = sum(detail.values())
        result["error_detail"] = {k: v for k, v in detail.items() if v}
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        result["non_2xx"] = int(match[1])
        result["error_detail"]["non-2xx/3xx"] = int(match[1])
    result["errors"] = result["socket_errors"] + result["non_2xx"]
    return result


# -- hey -------------------------------------------------------------------------------------


def hey_command(spec: LoadSpec) -> list[str]:
    command = ["hey", "-z", f"{spec.duration:g}s", "-c", str(spec.connections), "-t", "10"]
    if spec.host:
        command += ["-host", spec.host]
    if not spec.keepalive:
        command.append("-disable-keepalive")
    return [*command, spec.url]


def parse_hey(text: str) -> dict:
    result = _empty_result()
    if match := re.search(r"Total:\s+([\d.]+) secs", text):
        result["seconds"] = float(match[1])
    if match := re.search(r"Requests/sec:\s+([\d.]+)", text):
        result["rps"] = float(match[1])
    for match in re.finditer(r"^\s*(50|75|90|99)% in ([\d.]+) secs", text, re.MULTILINE):
        result[f"p{match[1]}_ms"] = float(match[2]) * 1000
    _, _, statuses = text.partition("Status code distribution:")
    statuses, _, errors = statuses.partition("Error distribution:")
    for match in re.finditer(r"\[(\d+)\]\s+(\d+) responses", statuses):
        code, count = int(match[1]), int(match[2])
        result["requests"] += count
        if not 200 <= code < 300:
            result["non_2xx"] += count
            result["error_detail"][f"status {code}"] = count
    for match in re.finditer(r"^\s*\[(\d+)\]\s+(.+)$", errors, re.MULTILINE):
        result["socket_errors"] += int(match[1])
        message = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "ADDR", match[2].strip())[:160]
        result["error_detail"][message] = result["error_detail"].get(message, 0) + int(match[1])
    result["errors"] = result["socket_errors"] + result["non_2xx"]
    return result


# -- builtin ---------------------------------------------------------------------------------


def builtin_command(spec: LoadSpec) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.e2e.builtin",
        "load",
        "--port",
        str(spec.port),
        "-c",
        str(spec.connections),
        "-d",
        f"{spec.duration:g}",
    ]
    if spec.host:
        command += ["--host", spec.host]
    if not spec.keepalive:
        command.append("--close")
    if spec.tls_ca:
        command += ["--tls-ca", str(spec.tls_ca)]
    return command


def _parse_json(text: str) -> dict:
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"rps": None}


def run_load(tool: str, spec: LoadSpec) -> dict:
    timeout = spec.duration + spec.timeout
    if tool == "wrk":
        return _run("wrk", wrk_command(spec), timeout, parse_wrk)
    if tool == "hey":
        return _run("hey", hey_command(spec), timeout, parse_hey)
    return _run("builtin", builtin_command(spec), timeout, _parse_json)


# -- transfers -------------------------------------------------------------------------------


def curl_transfer(
    kind: str,
    port: int,
    host: str | None,
    size: int,
    upload_file: Path | None,
    timeout: float = 120.0,
    tls_ca: Path | None = None,
) -> dict:
    base = ["curl", "-sS", "--max-time", f"{timeout:g}", "-H", "Expect:"]
    if host:
        base += ["-H", f"Host: {host}"]
    if tls_ca:
        base += ["--cacert", str(tls_ca)]
    origin = f"{'https' if tls_ca else 'http'}://{LOOPBACK}:{port}"
    if kind == "download":
        command = [
            *base,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{speed_download} %{time_total}",
            f"{origin}/bytes?n={size}",
        ]
    else:
        assert upload_file is not None
        command = [
            *base,
            "-X",
            "POST",
            "-T",
            str(upload_file),
            "-H",
            "Content-Type: application/octet-stream",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{size_upload} %{speed_upload} %{time_total}",
            f"{origin}/upload",
        ]
    status, out, err = run_bounded(command, timeout + 15)
    result = {
        "tool": "curl",
        "command": shlex.join(command),
        "bytes": 0,
        "seconds": 0.0,
        "mb_per_s": 0.0,
        "status": 0,
        "ok": False,
        "error": None,
    }
    if status is None:
        result["error"] = f"timed out after {timeout + 15:.0f} s"
        return result
    lines = out.strip().splitlines()
    try:
        code, moved, speed, total = lines[-1].split()
    except (IndexError, ValueError):
        result["error"] = f"curl exit {status}: {err.strip()[-300:]}"
        return result
    result.update(
        status=int(code), bytes=int(moved), seconds=float(total), mb_per_s=float(speed) / 1e6
    )
    body_ok = kind == "download" or (len(lines) >= 2 and lines[0].strip() == str(size))
    result["ok"] = status == 0 and int(code) == 200 and int(moved) == size and body_ok
    if not result["ok"]:
        result["error"] = (
            f"curl exit {status}, HTTP {code}, moved {moved} of {size} bytes"
            + ("" if body_ok else f", origin saw {lines[0][:40]!r}")
            + (f": {err.strip()[-300:]}" if err.strip() else "")
        )
        result["mb_per_s"] = 0.0
    return result


def builtin_transfer(
    kind: str,
    port: int,
    host: str | None,
    size: int,
    timeout: float = 120.0,
    tls_ca: Path | None = None,
) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.e2e.builtin",
        kind,
        "--port",
        str(port),
        "--size",
        str(size),
    ]
    if host:
        command += ["--host", host]
    if tls_ca:
        command += ["--tls-ca", str(tls_ca)]
    status, out, err = run_bounded(command, timeout)
    data = _parse_json(out) if status is not None else {}
    ok = bool(data.get("ok"))
    return {
        "tool": "builtin",
        "command": shlex.join(command),
        "bytes": data.get("bytes", 0),
        "seconds": data.get("seconds", 0.0),
        "mb_per_s": (data.get("bytes_per_s") or 0.0) / 1e6,
        "status": data.get("status", 0),
        "ok": ok,
        "error": None
        if ok
        else (data.get("error") or err.strip()[-300:] or f"timed out after {timeout:.0f} s"),
    }
