"""results.json, results.md (Markdown tables) and results.png (when matplotlib is there)."""

from __future__ import annotations

import json
import re
from pathlib import Path

_FINDING = re.compile(r"Traceback|ERROR|CRITICAL|WARNING|Exception|exception|error:", re.I)


# -- formatting ------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b:
        return "—"
    value = a / b
    return f"{value:.0f}×" if value >= 10 else f"{value:.2f}×"


def _errors(result: dict) -> str:
    errors = result.get("errors")
    return f" ⚠ {errors:,} err" if errors else ""


def short(kind: str, result: dict) -> str:
    """One progress line."""
    if result.get("skipped"):
        return f"skipped: {result['skipped']}"
    if result.get("failed"):
        return f"FAILED: {result['failed'][:200]}"
    if kind in ("download", "upload"):
        return f"{result['mb_per_s']:,.0f} MB/s (runs {result['runs']}){_errors(result)}"
    return (
        f"{result['rps']:,.0f} req/s  p50 {_num(result.get('p50_ms'))} ms  "
        f"p99 {_num(result.get('p99_ms'))} ms{_errors(result)}"
        + (f"  (runs {result['runs_rps']})" if result.get("runs_rps") else "")
    )


def log_findings(path: Path, limit: int = 8) -> dict:
    """Lines of a process log that look like warnings, errors or tracebacks."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"count": 0, "first": []}
    hits = [line.strip() for line in lines if _FINDING.search(line)]
    unique: list[str] = []
    for line in hits:
        line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", line)[:240]
        if line not in unique:
            unique.append(line)
        if len(unique) >= limit:
            break
    return {"count": len(hits), "first": unique}


# -- Markdown --------------------------------------------------------------------------------


def _columns(data: dict) -> tuple[list[str], list[str]]:
    """Every column, and those measured against direct (all but direct itself)."""
    names = list(data["targets"])
    return names, [n for n in names if n != "direct"]


def _template_peers(data: dict) -> list[str]:
    """Columns started from --peer-server/--peer-client (the Go original, usually)."""
    return [
        n
        for n, t in data["targets"].items()
        if t.get("kind", "template") == "template" and n not in ("direct", "ytun")
    ]


def _cell(kind: str, result: dict | None, field: str) -> str:
    if result is None:
        return "—"
    if result.get("skipped"):
        return "skipped"
    if result.get("failed"):
        return "failed"
    if kind in ("download", "upload"):
        return _num(result.get("mb_per_s")) + _errors(result)
    if field == "rps":
        return f"{result.get('rps', 0):,.0f}" + _errors(result)
    return f"{_num(result.get('p50_ms'))} / {_num(result.get('p99_ms'))}"


def _value(kind: str, result: dict | None, field: str) -> float | None:
    if not result or result.get("failed") or result.get("skipped"):
        return None
    if kind in ("download", "upload"):
        return result.get("mb_per_s") or None
    return result.get(field)


def _ratio_cell(kind: str, a: dict | None, b: dict | None, field: str) -> str:
    if field == "lat":
        return (
            f"{_ratio(_value(kind, a, 'p50_ms'), _value(kind, b, 'p50_ms'))} / "
            f"{_ratio(_value(kind, a, 'p99_ms'), _value(kind, b, 'p99_ms'))}"
        )
    return _ratio(_value(kind, a, field), _value(kind, b, field))


def main_table(data: dict) -> list[str]:
    _, measured = _columns(data)
    header = ["scenario", "direct"]
    for name in measured:
        header += [name, f"{name}/direct"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for scenario in data["scenarios"]:
        kind, results = scenario["kind"], scenario["results"]
        rows = (
            [("rps", f"{scenario['label']}: req/s")]
            if kind in ("keepalive", "close")
            else [("mb_per_s", scenario["label"])]
        )
        if kind in ("keepalive", "close"):
            rows.append(("lat", f"{scenario['label']}: p50 / p99 ms"))
        for field, label in rows:
            direct = results.get("direct")
            cells = [label, _cell(kind, direct, field)]
            for name in measured:
                result = results.get(name)
                ratio = "skipped" if result and result.get("skipped") else None
                cells += [
                    _cell(kind, result, field),
                    ratio or _ratio_cell(kind, result, direct, field),
                ]
            lines.append("| " + " | ".join(cells) + " |")
    # Resources of the tunnel processes over the measured part of the run.
    processes = data.get("processes", {})
    resource_rows = [
        ("peak_rss_mb", "server", "server peak RSS, MB (VmHWM)"),
        ("peak_rss_mb", "client", "client peak RSS, MB (VmHWM)"),
        ("cpu_s", "server", "server CPU s (utime+stime, measured part)"),
        ("cpu_s", "client", "client CPU s (utime+stime, measured part)"),
        ("fds", "server", "server open fds, start → end"),
    ]
    for key, role, label in resource_rows:

        def cell(name: str, key=key, role=role) -> str:
            proc = processes.get(f"{name}-{role}")
            if proc is None:
                return "—"
            if key == "fds":
                return f"{proc['fds_start']} → {proc['fds_end']}"
            return _num(proc[key])

        cells = [label, "—"]
        for name in measured:
            cells += [cell(name), "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets_table(data: dict) -> list[str]:
    """The design's performance targets, where this run measured them."""
    by_id = {s["id"]: s["results"] for s in data["scenarios"]}
    processes = data.get("processes", {})
    peers = _template_peers(data)
    rows: list[tuple[str, str, bool | None]] = []

    def get(sid: str, name: str) -> dict | None:
        result = by_id.get(sid, {}).get(name)
        return None if not result or result.get("failed") or result.get("skipped") else result

    ytun, direct = get("keepalive-c32", "ytun"), get("keepalive-c32", "direct")
    if ytun and direct and direct["rps"]:
        share = ytun["rps"] / direct["rps"]
        rows.append(("req/s, 32 keep-alive conns ≥ 35 % of direct", f"{share:.0%}", share >= 0.35))
    for peer in peers:
        other = get("keepalive-c32", peer)
        if ytun and other and other["rps"]:
            times = ytun["rps"] / other["rps"]
            rows.append(
                (
                    f"req/s, 32 keep-alive conns ≥ 4× {peer} (target is vs the Go original)",
                    f"{times:.2f}×",
                    times >= 4,
                )
            )
    one = get("keepalive-c1", "ytun")
    if one and one.get("p50_ms") is not None:
        rows.append(
            ("p50, one connection ≤ 0.25 ms", f"{one['p50_ms']:.3f} ms", one["p50_ms"] <= 0.25)
        )
    for scenario in data["scenarios"]:
        if scenario["kind"] in ("download", "upload") and scenario["bytes"] >= 100 << 20:
            result = get(scenario["id"], "ytun")
            if result:
                rows.append(
                    (
                        f"one 100 MiB {scenario['kind']} ≥ 1 GB/s",
                        f"{result['mb_per_s']:,.0f} MB/s",
                        result["mb_per_s"] >= 1000,
                    )
                )
    for kind in ("keepalive", "close"):
        result = get(f"{kind}-c1000", "ytun")
        if result:
            rows.append(
                (
                    f"1,000 concurrent connections ({kind}): 0 errors",
                    f"{result['errors']:,} errors",
                    result["errors"] == 0,
                )
            )
    server = processes.get("ytun-server")
    if server and any(s["connections"] == 1000 for s in data["scenarios"]):
        rows.append(
            (
                "server RSS ≤ 150 MB with 1,000 connections",
                f"{server['peak_rss_mb']:.0f} MB peak",
                server["peak_rss_mb"] <= 150,
            )
        )
    if not rows:
        return []
    lines = ["| design target | measured | |", "|---|---:|---|"]
    lines += [f"| {what} | {value} | {'pass' if ok else '**miss**'} |" for what, value, ok in rows]
    return lines


def cpu_table(data: dict) -> list[str]:
    names = [n for n in data["targets"] if n != "direct"]
    rows = []
    for scenario in data["scenarios"]:
        cells = [
            str(scenario["results"].get(n, {}).get("tunnel_cpu_us_per_request", "—")) for n in names
        ]
        if any(c != "—" for c in cells):
            rows.append(f"| {scenario['label']} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["| scenario | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names), *rows]


def findings(data: dict) -> list[str]:
    lines = []
    if data.get("aborted"):
        lines.append(f"- **run aborted**: {data['aborted']}")
    for name, target in data["targets"].items():
        if target.get("skipped"):
            lines.append(f"- **{name} skipped**: {target['skipped']}")
        if target.get("failure"):
            lines.append(f"- **{name} failed**: `{target['failure'].splitlines()[0]}`")
    lines += [f"- {event}" for event in data.get("events", [])]
    for scenario in data["scenarios"]:
        for name, result in scenario["results"].items():
            if result.get("skipped"):
                continue
            if result.get("failed") and result["failed"] != "target down":
                lines.append(
                    f"- {scenario['id']} / {name}: tool failed: `{result['failed'][:300]}`"
                )
            elif result.get("errors"):
                detail = result.get("error_detail")
                lines.append(
                    f"- {scenario['id']} / {name}: {result['errors']:,} errors "
                    f"`{json.dumps(detail)[:300]}`"
                )
    for name, proc in data.get("processes", {}).items():
        found = proc.get("log_findings", {})
        if found.get("count"):
            lines.append(
                f"- {name} log ({proc['log']}): {found['count']} warning/error lines, "
                "e.g. " + "; ".join(f"`{line}`" for line in found["first"][:3])
            )
        status = proc.get("exit_status")
        if status not in (None, 0, 130, -15):
            lines.append(f"- {name} exit status {status} after SIGTERM")
    return lines


def markdown(data: dict) -> str:
    meta = data["meta"]
    out = [f"# ytun end-to-end benchmark, {meta['started']}", ""]
    out.append(f"`{meta['command']}`")
    out.append("")
    out.append(
        f"{meta['loadgen_version']}, {meta['duration_s']:g} s per run"
        + (f" (median of {meta['repeat']} by req/s)" if meta.get("repeat", 1) > 1 else "")
        + ", "
        f"{meta['transfer_tool']} for transfers (median of {meta['transfer_runs']}); "
        f"{meta['cpus']} CPUs ({meta['cpu_model'] or 'unknown'}), Linux "
        f"{meta['kernel']}, Python {meta['python']}, ytun {meta['ytun_version']} "
        f"(git {meta['git']}); wall time {meta['wall_s']:g} s. All on 127.0.0.1; the "
        "load generator, origin and tunnel share the CPUs."
    )
    out.append("")
    for name, target in data["targets"].items():
        what = f" ({target['what']})" if target.get("what") else ""
        if target.get("skipped"):
            out.append(f"- **{name}**: skipped, {target['skipped']}")
        elif target["commands"]:
            commands = " + ".join(f"`{c}`" for c in target["commands"].values())
            out.append(f"- **{name}**{what}: {commands}")
    out.append("")
    out += main_table(data)
    out += [
        "",
        "Each ratio divides a column's figure by direct's (higher is better for req/s and "
        "MB/s, lower for latency). ⚠ marks runs with errors (socket errors + non-2xx). "
        "Resources cover the measured part of the run, after warm-up; a column's server is "
        "its first process (ytun server, sshd, nginx), its client the second (ytun client, "
        "ssh), each with its descendants.",
        "",
    ]
    targets = targets_table(data)
    if targets:
        out += ["## Design targets", "", *targets, ""]
    cpu = cpu_table(data)
    if cpu:
        out += ["## Tunnel CPU per request (server + client, µs)", "", *cpu, ""]
    found = findings(data)
    out += ["## Errors and log findings", ""]
    out += found or ["- none"]
    out.append("")
    return "\n".join(out)


# -- chart -----------------------------------------------------------------------------------


def chart(data: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [n for n, t in data["targets"].items() if not t.get("skipped")]
    load = [s for s in data["scenarios"] if s["kind"] in ("keepalive", "close")]
    bulk = [s for s in data["scenarios"] if s["kind"] in ("download", "upload")]
    panels = [p for p in ((load, "rps", "req/s (log)"), (bulk, "mb_per_s", "MB/s")) if p[0]]
    if not panels:
        return False
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(6 + 5 * len(panels), 4.5),
        gridspec_kw={"width_ratios": [len(p[0]) for p in panels]},
        squeeze=False,
    )
    width = 0.8 / len(names)
    for ax, (scenarios, key, ylabel) in zip(axes[0], panels, strict=True):
        for index, name in enumerate(names):
            values = [(s["results"].get(name) or {}).get(key) or 0 for s in scenarios]
            ax.bar([i + index * width for i in range(len(scenarios))], values, width, label=name)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(scenarios))])
        ax.set_xticklabels([s["id"] for s in scenarios], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        if key == "rps":
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"ytun e2e, {data['meta']['started']}, {data['meta']['loadgen']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(data: dict, out: Path, chart_wanted: bool = True) -> list[Path]:
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(data, indent=2) + "\n")
    paths[1].write_text(markdown(data))
    if chart_wanted and chart(data, out / "results.png"):
        paths.append(out / "results.png")
    return paths
