"""Orchestration: origin, tunnels, scenarios, measurements, cleanup. See ``__init__``."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import platform
import secrets
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import loadgen, nginx_peer, report, ssh_peer, tls_peer
from .plans import Command, PeerContext, Plan, ToolMissing
from .procs import (
    LOOPBACK,
    ROOT,
    NotReady,
    Proc,
    foreign_cpu,
    foreign_delta,
    free_port,
    http_get,
    port_open,
    raise_fd_limit,
    run_bounded,
    stop_all,
    wait_until,
)

YTUN_SERVER = (
    "{python} -m ytun server --listen {listen} --host {host}={identifier} --log-level {log_level}"
)
YTUN_CLIENT = (
    "{python} -m ytun client --server {server} --identifier {identifier} "
    "--local {local} --log-level {log_level}"
)
PLACEHOLDERS = (
    "python",
    "listen",
    "server",
    "listen_port",
    "host",
    "vhost",
    "identifier",
    "local",
    "origin_port",
    "log_level",
)
VHOST = "bench.local"
KINDS = ("keepalive", "close", "download", "upload")
# Built-in peers (--peers): column name -> builder of its Plan.
PEERS = {"ytun-tls": tls_peer.plan, "ssh": ssh_peer.plan, "nginx": nginx_peer.plan}
BINARIES = ("ssh", "sshd", "ssh-keygen", "nginx")  # --ssh-bin, --sshd-bin, ...

EPILOG = f"""\
Command templates (--ytun-server/--ytun-client/--peer-server/--peer-client) are shell
command lines with these placeholders, filled in (shell-quoted) with the same values for
ytun and the peer, so both are started with the same flags:

  {{listen}} / {{server}}  127.0.0.1:PORT the tunnel server listens on (PORT is {{listen_port}})
  {{host}}               the virtual host, bench.local:PORT ({{vhost}} is bench.local alone)
  {{identifier}}         a random secret shared by the server and the client
  {{local}}              127.0.0.1:ORIGIN, the origin the client forwards to ({{origin_port}})
  {{python}}             this interpreter;  {{log_level}}  --tunnel-log-level (warning)

ytun itself runs from the default templates:
  --ytun-server '{YTUN_SERVER}'
  --ytun-client '{YTUN_CLIENT}'
Built-in peers (--peers ytun-tls,ssh,nginx or all), each its own column:
  ytun-tls  ytun with --tls-cert/--tls-key (HTTPS for the load generator, TLS to the client)
  ssh       a throw-away sshd + ssh -N -R (aes128-gcm@openssh.com, key-only auth)
  nginx     one reverse-proxy hop (worker_processes 1, upstream keepalive 64, access log off)
A peer whose program is missing is reported as skipped, with the reason.

The Go original, with wrappers that take the same values:
  --peer-name koding --peer-server 'tunnel-server -listen {{listen}} -vhost {{host}} \
-identifier {{identifier}}' --peer-client 'tunnel-client -server {{server}} \
-identifier {{identifier}} -local {{local}}'
"""


class Abort(BaseException):
    """SIGTERM or the overall time budget: stop, clean up, still write what was measured."""


@dataclass
class Target:
    name: str
    port: int
    host: str | None = None
    kind: str = "direct"  # direct, ytun, template (--peer-*) or a built-in peer's name
    procs: dict[str, Proc] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    failure: str | None = None
    skipped: str | None = None  # why the column was not measured (a program is missing)
    startup_s: float | None = None
    tls_ca: Path | None = None
    describe_text: str = ""
    idle_fds: int = 0  # fds it holds between runs by design (nginx's upstream keep-alive)

    @property
    def tunnel(self) -> bool:
        return bool(self.procs)

    @property
    def down(self) -> bool:
        return bool(self.failure or self.skipped)

    def describe(self) -> dict:
        scheme = "https" if self.tls_ca else "http"
        return {
            "kind": self.kind,
            "url": f"{scheme}://{LOOPBACK}:{self.port}/" if self.port else None,
            "host_header": self.host,
            "what": self.describe_text,
            "commands": self.commands,
            "startup_s": self.startup_s,
            "failure": self.failure,
            "skipped": self.skipped,
            "processes": {r: p.name for r, p in self.procs.items()},
        }


@dataclass
class Scenario:
    id: str
    kind: str
    label: str
    connections: int = 0
    size: int = 0
    results: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "connections": self.connections or None,
            "bytes": self.size or None,
            "results": self.results,
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.e2e",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="End-to-end benchmark on 127.0.0.1: a fast origin, direct and through "
        "ytun (and optionally another tunnel), driven by wrk, hey or a built-in "
        "load generator, with curl for bulk transfers.",
    )
    parser.add_argument("--duration", type=float, help="seconds per load run (default 10)")
    parser.add_argument("--connections", help="comma-separated (default 1,32,256,1000)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke: 1 s runs, connections 1,32, 1 MiB transfers, no warm-up",
    )
    parser.add_argument("--out", type=Path, help="output directory (default results/<time>/)")
    parser.add_argument(
        "--loadgen",
        default="auto",
        choices=["auto", "wrk", "hey", "builtin"],
        help="auto: wrk, else hey, else the built-in one",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(KINDS),
        help=f"which kinds to run (default {','.join(KINDS)})",
    )
    parser.add_argument("--transfer-mib", type=float, help="transfer size (default 100 MiB)")
    parser.add_argument(
        "--transfer-runs",
        type=int,
        help="transfers of each kind per target; the median counts (default 3)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds of unrecorded load per target before measuring (default 1)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="load runs per scenario and target; the one with the median req/s counts (default 1)",
    )
    parser.add_argument("--pause", type=float, help="seconds between runs (default 1)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=20.0,
        help="seconds a process may take to become ready (default 20)",
    )
    parser.add_argument("--ytun-server", default=YTUN_SERVER, metavar="CMD")
    parser.add_argument("--ytun-client", default=YTUN_CLIENT, metavar="CMD")
    parser.add_argument("--peer-server", metavar="CMD", help="another tunnel's server template")
    parser.add_argument("--peer-client", metavar="CMD", help="another tunnel's client template")
    parser.add_argument("--peer-name", default="peer", help="its column name (default peer)")
    parser.add_argument(
        "--peers",
        default="",
        metavar="LIST",
        help=f"built-in peers side by side: {', '.join(PEERS)} or all (default none)",
    )
    for binary in BINARIES:
        parser.add_argument(
            f"--{binary}-bin",
            metavar="PATH",
            help=f"the {binary} program for --peers (default: {binary} on PATH or in /usr/sbin)",
        )
    parser.add_argument(
        "--tunnel-log-level",
        default="warning",
        help="the {log_level} of the tunnels (default warning)",
    )
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    args = parser.parse_args(argv)

    quick = args.quick
    args.duration = args.duration if args.duration is not None else (1.0 if quick else 10.0)
    args.connections = [
        int(c)
        for c in (args.connections or ("1,32" if quick else "1,32,256,1000")).split(",")
        if c.strip()
    ]
    args.transfer_mib = (
        args.transfer_mib if args.transfer_mib is not None else (1.0 if quick else 100.0)
    )
    args.transfer_runs = args.transfer_runs or (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (0.0 if quick else 1.0)
    args.pause = args.pause if args.pause is not None else (0.2 if quick else 1.0)
    args.kinds = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    for kind in args.kinds:
        if kind not in KINDS:
            parser.error(f"--scenarios: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if any(c < 1 for c in args.connections):
        parser.error("--connections must be positive integers")
    if bool(args.peer_server) != bool(args.peer_client):
        parser.error("--peer-server and --peer-client go together")
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    args.builtin_peers = list(PEERS) if names == ["all"] else names
    for name in args.builtin_peers:
        if name not in PEERS:
            parser.error(f"--peers: unknown peer {name!r} (known: {', '.join(PEERS)}, all)")
    if args.peer_name in ("direct", "ytun", *PEERS):
        parser.error(f"--peer-name must differ from {', '.join(('direct', 'ytun', *PEERS))}")
    args.binaries = {b: getattr(args, f"{b.replace('-', '_')}_bin") for b in BINARIES}
    for template in filter(
        None, (args.ytun_server, args.ytun_client, args.peer_server, args.peer_client)
    ):
        try:
            render(template, dict.fromkeys(PLACEHOLDERS, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            parser.error(
                f"template {template!r}: unknown placeholder {exc} "
                f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
            )
    if args.out is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out = Path("results") / stamp
    return args


def render(template: str, values: dict[str, object]) -> str:
    return template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})


def scenarios_for(args: argparse.Namespace) -> list[Scenario]:
    result = []
    for kind in ("keepalive", "close"):
        if kind in args.kinds:
            for conns in args.connections:
                what = "keep-alive" if kind == "keepalive" else "new conn/request"
                plural = "conn" if conns == 1 else "conns"
                result.append(
                    Scenario(
                        f"{kind}-c{conns}", kind, f"{what}, {conns} {plural}", connections=conns
                    )
                )
    size = int(args.transfer_mib * 1024 * 1024)
    size_label = f"{args.transfer_mib:g} MiB"
    for kind in ("download", "upload"):
        if kind in args.kinds:
            result.append(
                Scenario(
                    f"{kind}-{size_label.replace(' ', '')}",
                    kind,
                    f"{size_label} {kind}, MB/s",
                    size=size,
                )
            )
    return result


class Bench:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.argv = argv
        self.out: Path = args.out
        self.logs = self.out / "logs"
        self.tool = loadgen.pick_tool(args.loadgen)
        self.curl = bool(shutil.which("curl"))
        self.origin: Proc | None = None
        self.origin_port = 0
        self.targets: list[Target] = []
        self.scenarios = scenarios_for(args)
        self.started = dt.datetime.now(dt.timezone.utc)
        self.base_stats: dict[str, dict] = {}
        self.final_stats: dict[str, dict] = {}
        self.exits: dict[str, int | None] = {}
        self.events: list[str] = []
        self.aborted: str | None = None
        self.upload_file: Path | None = None
        self.workdirs: list[Path] = []
        self._leaks: dict[str, tuple] = {}

    # -- processes -----------------------------------------------------------------------

    def all_procs(self) -> list[Proc]:
        procs = [self.origin] if self.origin else []
        for target in self.targets:
            procs.extend(target.procs.values())
        return procs

    def snapshot(self, sockets: bool = False) -> dict[str, dict]:
        return {proc.name: proc.stats(sockets).as_dict() for proc in self.all_procs()}

    def start_origin(self) -> None:
        for _attempt in range(3):
            port = free_port()
            proc = Proc(
                "origin",
                [sys.executable, "-m", "benchmarks.e2e.origin", "--port", str(port)],
                self.logs,
            ).start()
            try:
                wait_until(
                    lambda p=port: http_get(p, None)[0] == 200,
                    [proc],
                    self.args.ready_timeout,
                    "the origin",
                )
            except NotReady:
                proc.stop()
                if "in use" in proc.log_tail():
                    continue
                raise
            self.origin, self.origin_port = proc, port
            self.targets.append(Target("direct", port))
            return
        raise NotReady("could not find a free port for the origin")

    def template_values(self, port: int) -> dict[str, object]:
        return {
            "python": sys.executable,
            "listen": f"{LOOPBACK}:{port}",
            "server": f"{LOOPBACK}:{port}",
            "listen_port": port,
            "host": f"{VHOST}:{port}",
            "vhost": VHOST,
            "identifier": secrets.token_hex(12),
            "local": f"{LOOPBACK}:{self.origin_port}",
            "origin_port": self.origin_port,
            "log_level": self.args.tunnel_log_level,
        }

    def start_tunnel(
        self, name: str, server_template: str, client_template: str, kind: str = "template"
    ) -> Target:
        """A tunnel from command templates (ytun itself, --peer-server/--peer-client)."""

        def make_plan() -> Plan:
            port = free_port()
            values = self.template_values(port)
            return Plan(
                server=render(server_template, values),
                server_port=port,
                public_port=port,
                client=render(client_template, values),
                host=f"{VHOST}:{port}",
            )

        return self.start_plan(name, kind, make_plan)

    def start_peer(self, name: str) -> Target:
        """A built-in peer: skipped if a program is missing, failed if it does not start;
        either way the run goes on and the column says why."""
        workdir = Path(tempfile.mkdtemp(prefix=f"ytun-e2e-{name}-"))
        self.workdirs.append(workdir)

        def make_plan() -> Plan:
            port = free_port()
            values = self.template_values(port)
            context = PeerContext(
                origin_port=self.origin_port,
                workdir=workdir,
                python=sys.executable,
                log_level=self.args.tunnel_log_level,
                binaries=self.args.binaries,
                ytun_server=render(self.args.ytun_server, values),
                ytun_client=render(self.args.ytun_client, values),
                ytun_port=port,
                ytun_host=f"{VHOST}:{port}",
            )
            return PEERS[name](context)

        try:
            return self.start_plan(name, name, make_plan)
        except ToolMissing as exc:
            target = Target(name, 0, kind=name, skipped=str(exc))
            self.progress(f"e2e: {name} skipped: {exc}")
        except NotReady as exc:
            target = Target(name, 0, kind=name, failure=f"did not start: {exc}")
            self.progress(f"e2e: {name} failed to start: {exc}")
        self.targets.append(target)
        return target

    def start_plan(self, name: str, kind: str, make_plan: Callable[[], Plan]) -> Target:
        """Start a Plan's processes, wait until GET / answers through it; three tries on
        fresh ports when a log says a port was taken meanwhile."""
        for attempt in range(3):
            plan: Plan = make_plan()
            target = Target(
                name,
                plan.public_port,
                plan.host,
                kind=kind,
                tls_ca=plan.tls_ca,
                describe_text=plan.describe,
                idle_fds=plan.idle_fds,
            )
            target.commands = {"server": _display(plan.server)}
            if plan.client is not None:
                target.commands["client"] = _display(plan.client)
            for file_name, text in plan.files.items():
                (self.logs / f"{name}-{file_name}").write_text(text)
            started = time.monotonic()
            try:
                server = Proc(f"{name}-server", plan.server, self.logs).start()
                target.procs["server"] = server
                wait_until(
                    lambda p=plan.server_port: port_open(p),
                    [server],
                    self.args.ready_timeout,
                    f"{name} server on :{plan.server_port}",
                )
                if plan.client is not None:
                    client = Proc(f"{name}-client", plan.client, self.logs).start()
                    target.procs["client"] = client
                wait_until(
                    lambda t=target: http_get(t.port, t.host, ca=t.tls_ca)[0] == 200,
                    list(target.procs.values()),
                    self.args.ready_timeout,
                    f"{name}: GET / through it",
                )
            except NotReady:
                logs = "\n".join(proc.log_tail() for proc in target.procs.values())
                for proc in reversed(list(target.procs.values())):
                    proc.stop()
                if attempt < 2 and any(marker in logs for marker in plan.retry_markers):
                    continue
                raise
            target.startup_s = round(time.monotonic() - started, 3)
            self.targets.append(target)
            return target
        raise AssertionError("unreachable: the last attempt returns or raises")

    def check_target(self, target: Target) -> None:
        """After a run: every process alive and a GET through the tunnel still answers."""
        if self.origin is not None and not self.origin.alive():
            raise NotReady(f"the origin exited:\n{self.origin.log_tail()}")
        if not target.tunnel or target.down:
            return
        for proc in target.procs.values():
            if not proc.alive():
                target.failure = (
                    f"{proc.name} exited with status {proc.popen.returncode}:\n{proc.log_tail()}"
                )
                self.events.append(f"{target.name}: {proc.name} died; its later runs skipped")
                return
        try:
            status, _ = http_get(target.port, target.host, timeout=5, ca=target.tls_ca)
        except (OSError, http.client.HTTPException) as exc:
            status, error = 0, str(exc)
        else:
            error = f"HTTP {status}"
        if status != 200:
            self.events.append(
                f"{target.name}: GET / through the tunnel after a run failed ({error})"
            )

    # -- measuring -----------------------------------------------------------------------

    def measure(self, scenario: Scenario, target: Target) -> dict:
        args = self.args
        before = self.snapshot()
        sessions = {proc.pid for proc in self.all_procs()}
        foreign_before = foreign_cpu(sessions)
        started = time.monotonic()
        if scenario.kind in ("keepalive", "close"):
            spec = loadgen.LoadSpec(
                target.port,
                target.host,
                scenario.connections,
                args.duration,
                keepalive=scenario.kind == "keepalive",
                tls_ca=target.tls_ca,
            )
            runs = []
            for attempt in range(args.repeat):
                run = loadgen.run_load(self.tool, spec)
                suffix = f"-{attempt + 1}" if args.repeat > 1 else ""
                raw = self.out / "raw" / f"{scenario.id}-{target.name}{suffix}.txt"
                raw.parent.mkdir(exist_ok=True)
                raw.write_text(run.get("command", "") + "\n\n" + run.pop("raw", ""))
                run["output"] = str(raw.relative_to(self.out))
                runs.append(run)
                if attempt + 1 < args.repeat:
                    time.sleep(args.pause)
            # The run with the median req/s stands for the scenario; errors add up.
            result = dict(sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2])
            if len(runs) > 1:
                result["runs_rps"] = [round(r["rps"]) for r in runs]
                result["runs_p50_ms"] = [r["p50_ms"] for r in runs]
                result["errors"] = sum(r["errors"] or 0 for r in runs)
                result["requests_all_runs"] = sum(r["requests"] for r in runs)
        else:
            runs = []
            for _ in range(args.transfer_runs):
                if self.curl:
                    runs.append(
                        loadgen.curl_transfer(
                            scenario.kind,
                            target.port,
                            target.host,
                            scenario.size,
                            self.upload_file,
                            tls_ca=target.tls_ca,
                        )
                    )
                else:
                    runs.append(
                        loadgen.builtin_transfer(
                            scenario.kind,
                            target.port,
                            target.host,
                            scenario.size,
                            tls_ca=target.tls_ca,
                        )
                    )
                time.sleep(min(args.pause, 0.3))
            good = [run["mb_per_s"] for run in runs if run["ok"]]
            result = {
                "tool": runs[0]["tool"],
                "command": runs[0]["command"],
                "mb_per_s": statistics.median(good) if good else 0.0,
                "seconds": statistics.median(r["seconds"] for r in runs if r["ok"])
                if good
                else None,
                "errors": len(runs) - len(good),
                "error_detail": [r["error"] for r in runs if r["error"]],
                "runs": [round(r["mb_per_s"], 1) for r in runs],
                "failed": None,
            }
        time.sleep(args.pause)
        after = self.snapshot(sockets=True)
        result["cpu_s"] = {
            name: round(after[name]["cpu_s"] - before[name]["cpu_s"], 3)
            for name in after
            if name in before
        }
        result["after"] = {
            name: {k: stats[k] for k in ("rss_mb", "peak_rss_mb", "fds", "tcp")}
            for name, stats in after.items()
        }
        # Whatever else ran on the machine meanwhile (CI, another benchmark) makes noise.
        wall = time.monotonic() - started
        other = foreign_delta(foreign_before, foreign_cpu(sessions))
        result["machine"] = {"wall_s": round(wall, 2), "other_cpu_s": round(other, 2)}
        capacity = wall * (os.cpu_count() or 1)
        if capacity and other / capacity > 0.10:
            self.events.append(
                f"noise: other processes used {other / capacity:.0%} of the machine during "
                f"{scenario.id} / {target.name} ({other:.1f} CPU s)"
            )
        self.check_leaks(scenario, target, after)
        requests = result.get("requests_all_runs", result.get("requests"))
        if target.tunnel and requests:
            cpu = sum(result["cpu_s"].get(p.name, 0.0) for p in target.procs.values())
            result["tunnel_cpu_us_per_request"] = round(cpu / requests * 1e6, 1)
        return result

    def check_leaks(self, scenario: Scenario, target: Target, after: dict[str, dict]) -> None:
        """Sockets the peer closed but a tunnel process still holds, and fds that grow."""
        for proc in target.procs.values():
            stats = after.get(proc.name)
            if stats is None:
                continue
            close_wait = (stats.get("tcp") or {}).get("CLOSE_WAIT", 0)
            base = self.base_stats.get(proc.name)
            grown = stats["fds"] - base["fds"] - target.idle_fds if base else 0
            if self._leaks.get(proc.name) == (close_wait, grown > 8 and stats["fds"]):
                continue  # reported already, unchanged
            self._leaks[proc.name] = (close_wait, grown > 8 and stats["fds"])
            if close_wait:
                self.events.append(
                    f"leak? {proc.name} holds {close_wait} CLOSE_WAIT sockets "
                    f"{self.args.pause:g} s after {scenario.id} / {target.name} "
                    "(the peer closed, the process did not)"
                )
            if base and grown > 8:
                self.events.append(
                    f"leak? {proc.name} has {stats['fds']} open fds "
                    f"{self.args.pause:g} s after {scenario.id} / {target.name} "
                    f"(started with {base['fds']}; sockets {stats.get('tcp')})"
                )

    def warm_up(self, target: Target) -> None:
        if self.args.warmup > 0 and {"keepalive", "close"} & set(self.args.kinds):
            loadgen.run_load(
                self.tool,
                loadgen.LoadSpec(
                    target.port, target.host, 32, self.args.warmup, tls_ca=target.tls_ca
                ),
            )

    def progress(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def run(self) -> None:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        raise_fd_limit()
        self.progress(f"e2e: load generator {self.tool}; output in {self.out}")
        self.start_origin()
        self.start_tunnel("ytun", args.ytun_server, args.ytun_client, kind="ytun")
        for name in args.builtin_peers:
            self.start_peer(name)
        if args.peer_server:
            self.start_tunnel(args.peer_name, args.peer_server, args.peer_client)
        if "upload" in args.kinds:
            fd, name = tempfile.mkstemp(prefix="ytun-e2e-upload-", suffix=".bin")
            os.ftruncate(fd, self.scenarios[-1].size)  # sparse: zeros without disk I/O
            os.close(fd)
            self.upload_file = Path(name)
        for target in self.targets:
            if not target.down:
                self.warm_up(target)
        self.base_stats = self.snapshot()
        for scenario in self.scenarios:
            for target in self.targets:
                if target.skipped:
                    scenario.results[target.name] = {"skipped": target.skipped, "errors": None}
                    continue
                if target.failure:
                    scenario.results[target.name] = {"failed": "target down", "errors": None}
                    continue
                result = self.measure(scenario, target)
                scenario.results[target.name] = result
                self.progress(
                    f"e2e: {scenario.id:<22} {target.name:<8} "
                    + report.short(scenario.kind, result)
                )
                self.check_target(target)
        self.final_stats = self.snapshot()

    def stop(self) -> None:
        if self.base_stats and not self.final_stats:  # aborted: keep what was measured
            with contextlib.suppress(Exception):
                self.final_stats = self.snapshot()
        for target in reversed(self.targets):
            for role in ("client", "server"):
                proc = target.procs.get(role)
                if proc is not None:
                    alive = proc.alive()
                    self.exits[proc.name] = proc.stop(grace=10.0)
                    if alive and self.exits[proc.name] not in (0, 130, -signal.SIGTERM):
                        self.events.append(
                            f"{proc.name} did not exit cleanly on SIGTERM "
                            f"(status {self.exits[proc.name]})"
                        )
        if self.origin is not None:
            self.exits["origin"] = self.origin.stop()
        stop_all()
        for workdir in self.workdirs:  # keys and certificates: never left behind
            shutil.rmtree(workdir, ignore_errors=True)
        if self.upload_file is not None:
            with contextlib.suppress(OSError):
                self.upload_file.unlink()

    # -- results -------------------------------------------------------------------------

    def results(self) -> dict:
        processes = {}
        for proc in self.all_procs():
            start = self.base_stats.get(proc.name)
            end = self.final_stats.get(proc.name) or start
            if start is None or end is None:
                continue
            processes[proc.name] = {
                "command": proc.display,
                "peak_rss_mb": end["peak_rss_mb"],
                "cpu_s": round(end["cpu_s"] - start["cpu_s"], 3),
                "cpu_s_total": end["cpu_s"],
                "rss_mb_start": start["rss_mb"],
                "rss_mb_end": end["rss_mb"],
                "fds_start": start["fds"],
                "fds_end": end["fds"],
                "threads": end["threads"],
                "exit_status": self.exits.get(proc.name),
                "log": str(proc.log_path.relative_to(self.out)),
                "log_findings": report.log_findings(proc.log_path),
            }
        return {
            "meta": self.meta(),
            "targets": {t.name: t.describe() for t in self.targets},
            "scenarios": [s.as_dict() for s in self.scenarios],
            "processes": processes,
            "events": self.events,
            "aborted": self.aborted,
        }

    def meta(self) -> dict:
        rev = dirty = ""
        if shutil.which("git"):  # a release tarball or a bare machine has no git: say "?"
            _, rev, _ = run_bounded(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], 10)
            _, dirty, _ = run_bounded(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], 10
            )
        try:
            from ytun import __version__ as ytun_version
        except ImportError:
            ytun_version = "?"
        cpu = ""
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        finished = dt.datetime.now(dt.timezone.utc)
        return {
            "command": shlex.join(["python", "-m", "benchmarks.e2e", *self.argv]),
            "started": self.started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "wall_s": round((finished - self.started).total_seconds(), 1),
            "loadgen": self.tool,
            "loadgen_version": loadgen.tool_version(self.tool),
            "transfer_tool": "curl" if self.curl else "builtin",
            "transfer_tool_version": loadgen.tool_version("curl" if self.curl else "builtin"),
            "duration_s": self.args.duration,
            "repeat": self.args.repeat,
            "connections": self.args.connections,
            "transfer_bytes": int(self.args.transfer_mib * 1024 * 1024),
            "transfer_runs": self.args.transfer_runs,
            "quick": self.args.quick,
            "cpus": os.cpu_count(),
            "cpu_model": cpu,
            "kernel": platform.release(),
            "python": platform.python_version(),
            "ytun_version": ytun_version,
            "git": (rev.strip() or "?") + ("+dirty" if dirty.strip() else ""),
        }


def _display(command: Command) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def budget_seconds(args: argparse.Namespace, scenarios: list[Scenario]) -> int:
    targets = 2 + bool(args.peer_server) + len(args.builtin_peers)
    per_run = (args.duration + args.pause + 40) * args.repeat
    transfers = args.transfer_runs * 150
    runs = sum(per_run if s.kind in ("keepalive", "close") else transfers for s in scenarios)
    starts = 2 * 3 * args.ready_timeout  # two waits, three tries on fresh ports
    return int(targets * (runs + args.warmup + 40 + starts) + 120)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    bench = Bench(args, argv)

    def on_signal(signum, _frame):
        raise Abort(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGALRM)}
    signal.alarm(budget_seconds(args, bench.scenarios))
    status = 0
    try:
        try:
            bench.run()
        except NotReady as exc:
            bench.aborted = f"not ready: {exc}"
            status = 1
        except KeyboardInterrupt:
            bench.aborted = "interrupted (SIGINT)"
            status = 130
        except Abort as exc:
            bench.aborted = "time budget exceeded" if str(exc) == "SIGALRM" else f"stopped by {exc}"
            status = 1
        except Exception as exc:  # a bug here: still reap everything and keep what was measured
            traceback.print_exc()
            bench.aborted = f"error: {type(exc).__name__}: {exc}"
            status = 1
        finally:
            signal.alarm(0)
            bench.stop()
    finally:
        stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if bench.aborted:
        print(f"e2e: {bench.aborted}", file=sys.stderr)
    if bench.out.exists():
        data = bench.results()
        paths = report.write_all(data, bench.out, chart_wanted=not args.no_chart)
        print((bench.out / "results.md").read_text())
        print("e2e: wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return status
