"""Subprocesses that are always reaped: start in their own session, measure from /proc, stop.

Every child runs with ``start_new_session=True``, so a shell template and whatever it
spawns share one session id; statistics add up every process of that session and every
descendant (sshd forks a process per connection that calls setsid(), so it leaves the
session but stays a descendant), and stopping signals the whole group and those
descendants (SIGTERM, then SIGKILL after a grace period). ``REGISTRY`` holds every live
child so that ``stop_all()`` can reap them on any exit path.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import shlex
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]  # the repository: `-m ytun` and `-m benchmarks`
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_SHELL_META = set(";&|<>()`$\n")


@dataclass
class ProcStats:
    """A snapshot of one process session (summed over its processes)."""

    cpu_s: float = 0.0  # utime + stime (+ reaped children) in seconds
    rss_kb: int = 0  # VmRSS now
    hwm_kb: int = 0  # VmHWM, the peak resident set
    fds: int = 0  # open file descriptors
    threads: int = 0
    pids: int = 0
    tcp: dict[str, int] | None = None  # TCP sockets by state, when asked for

    def as_dict(self) -> dict:
        return {
            "cpu_s": round(self.cpu_s, 3),
            "rss_mb": round(self.rss_kb / 1024, 1),
            "peak_rss_mb": round(self.hwm_kb / 1024, 1),
            "fds": self.fds,
            "threads": self.threads,
            "processes": self.pids,
            "tcp": self.tcp,
        }


def _read_pid(pid: int) -> tuple[int, float, int, int, int, int] | None:
    """(session id, cpu seconds, VmRSS kB, VmHWM kB, fds, threads) of one pid, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is state (field 3 of stat(5)); session is field 6, utime 14 ... cstime 17.
    session = int(fields[3])
    if fields[0] == "Z":
        return session, 0.0, 0, 0, 0, 0
    ticks = sum(int(value) for value in fields[11:15])
    rss = hwm = threads = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    return session, ticks / _CLK_TCK, rss, hwm, fds, threads


def _parents() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, session id)}`` of every process now."""
    result = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            result[int(entry)] = (int(fields[1]), int(fields[3]))
    return result


def _start_tick(pid: int) -> int | None:
    """When ``pid`` started (ticks since boot), to tell it from a later process with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int, parents: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """Every process whose chain of parents leads to ``root`` (``root`` excluded)."""
    parents = _parents() if parents is None else parents
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{name}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return inodes


def tcp_states(pids: list[int]) -> dict[str, int]:
    """TCP sockets held by ``pids``, counted by state (CLOSE_WAIT = the peer closed and the
    process has not: the mark of a leaked connection)."""
    inodes = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    counts: dict[str, int] = {}
    if not inodes:
        return counts
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                state = _TCP_STATES.get(fields[3], fields[3])
                counts[state] = counts.get(state, 0) + 1
    return counts


def foreign_cpu(exclude_sessions: set[int]) -> dict[int, tuple[int, float]]:
    """``{pid: (start tick, CPU seconds with reaped children)}`` of every user-space process
    that is not ours: not this process, not one of its descendants, not in one of
    ``exclude_sessions``, not a kernel thread (ksoftirqd does our loopback networking).
    Key ``0`` holds the time of the snapshot in ticks since boot."""
    me = os.getpid()
    ours = descendants(me)
    result: dict[int, tuple[int, float]] = {}
    with contextlib.suppress(OSError, ValueError):
        result[0] = (int(float(Path("/proc/uptime").read_text().split()[0]) * _CLK_TCK), 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me or int(entry) in ours:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid, session = int(fields[1]), int(fields[3])
        if ppid in (me, 2) or int(entry) == 2 or session in exclude_sessions:
            continue
        cpu = sum(int(value) for value in fields[11:15]) / _CLK_TCK
        result[int(entry)] = (int(fields[19]), cpu)
    return result


def foreign_delta(
    before: dict[int, tuple[int, float]], after: dict[int, tuple[int, float]]
) -> float:
    """CPU the foreign processes used between two snapshots: the growth of those seen
    twice, plus all of those started in between."""
    since = before.get(0, (0, 0.0))[0]
    total = 0.0
    for pid, (started, cpu) in after.items():
        seen = before.get(pid)
        if seen is not None and seen[0] == started:
            total += max(0.0, cpu - seen[1])
        elif pid and started >= since:
            total += cpu
    return total


class Proc:
    """A child process in its own session, with its output in a log file."""

    def __init__(
        self, name: str, command: list[str] | str, log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.command = command
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.popen: subprocess.Popen | None = None
        self._log = None
        self._peak_hwm_kb = 0

    @property
    def display(self) -> str:
        return self.command if isinstance(self.command, str) else shlex.join(self.command)

    def start(self) -> Proc:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = self.command
        if isinstance(command, str) and not (_SHELL_META & set(command)):
            command = "exec " + command  # no shell left in between: stats are the program's
        self.popen = subprocess.Popen(
            command,
            shell=isinstance(command, str),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
            cwd=ROOT,
        )
        REGISTRY.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def family(self) -> set[int]:
        """The child, the other members of its session and all of its descendants."""
        if self.popen is None or self.popen.poll() is not None:
            return set()
        parents = _parents()
        members = {self.pid} | descendants(self.pid, parents)
        members |= {pid for pid, (_, sid) in parents.items() if sid == self.pid}
        return members

    def stats(self, sockets: bool = False) -> ProcStats:
        """Sum over the child's family (a template may fork; sshd forks per connection)."""
        result = ProcStats()
        if self.popen is None:
            return result
        members = []
        for pid in sorted(self.family()):
            info = _read_pid(pid)
            if info is None:
                continue
            members.append(pid)
            result.pids += 1
            result.cpu_s += info[1]
            result.rss_kb += info[2]
            result.hwm_kb += info[3]
            result.fds += info[4]
            result.threads += info[5]
        if sockets:
            result.tcp = tcp_states(members)
        self._peak_hwm_kb = max(self._peak_hwm_kb, result.hwm_kb)
        result.hwm_kb = self._peak_hwm_kb
        return result

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the session's group, SIGKILL it after ``grace`` seconds; the exit status."""
        if self.popen is None:
            return None
        # Descendants that left the session (setsid) are found now, before their parent
        # exits and they are handed to init.
        strays = {pid: _start_tick(pid) for pid in self.family() - {self.pid}}
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (the leader or its children) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid, started in strays.items():
            if started is not None and _start_tick(pid) == started:  # not a recycled pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in REGISTRY:
            REGISTRY.remove(self)
        return self.popen.returncode


REGISTRY: list[Proc] = []


def stop_all(grace: float = 3.0) -> None:
    for proc in reversed(list(REGISTRY)):
        with contextlib.suppress(Exception):
            proc.stop(grace)


def run_bounded(
    command: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int | None, str, str]:
    """Run a short-lived tool (wrk, hey, curl…) in its own session with a hard timeout.
    Returns (exit status or None on timeout, stdout, stderr)."""
    popen = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
        cwd=ROOT,
    )
    try:
        out, err = popen.communicate(timeout=timeout)
        return popen.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        out, err = popen.communicate()
        return None, out.decode(errors="replace"), err.decode(errors="replace")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def http_get(
    port: int,
    host: str | None,
    path: str = "/",
    timeout: float = 2.0,
    ca: Path | None = None,
) -> tuple[int, bytes]:
    """One GET to 127.0.0.1:port with an optional Host header: (status, body); over HTTPS,
    verified with the CA certificate ``ca``, when it is given."""
    conn: http.client.HTTPConnection
    if ca is not None:
        context = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        headers = {"Host": host} if host else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class NotReady(RuntimeError):
    pass


def wait_until(check, procs: list[Proc], timeout: float, what: str) -> float:
    """Poll ``check()`` until it is true; fail early if one of ``procs`` exits.
    Returns the seconds it took."""
    start = time.monotonic()
    last_error = ""
    while True:
        for proc in procs:
            if not proc.alive():
                raise NotReady(
                    f"{proc.name} exited with status {proc.popen.returncode} "
                    f"while waiting for {what}:\n{proc.log_tail()}"
                )
        try:
            if check():
                return time.monotonic() - start
        except (OSError, http.client.HTTPException) as exc:
            last_error = f" (last error: {exc})"
        if time.monotonic() - start > timeout:
            raise NotReady(f"{what} not ready after {timeout:.0f} s{last_error}")
        time.sleep(0.05)


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (inherited by every child) so 1,000 connections fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
