"""How a column is started: the processes, the port each one is ready on, where load goes.

``python -m benchmarks.e2e`` starts every tunnel or proxy from a ``Plan``: the first
process (a tunnel server, sshd, nginx) must accept connections on ``server_port``, then the
second (a tunnel client, ``ssh -R``), if any, is started, and the column is ready when
``GET /`` through ``public_port`` answers 200. Builders of the built-in peers take a
``PeerContext`` and raise ``ToolMissing`` when a program they need is not installed: that
column is then reported as skipped, with the reason.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

Command = list[str] | str


class ToolMissing(Exception):
    """A program (or module) a peer needs is not there; the message says which and how to
    install it."""


@dataclass
class PeerContext:
    """What every peer builder gets: the origin, a private directory, the chosen programs."""

    origin_port: int
    workdir: Path  # private to this peer (keys, configs), removed after the run
    python: str
    log_level: str
    binaries: dict[str, str | None]  # --ssh-bin etc.: None means "look it up"
    ytun_server: str = ""  # the ytun templates rendered for ytun_port, for ytun-tls
    ytun_client: str = ""
    ytun_port: int = 0
    ytun_host: str | None = None


@dataclass
class Plan:
    server: Command
    server_port: int  # the server is up when this port accepts connections
    public_port: int  # where the load generator and curl go
    client: Command | None = None
    host: str | None = None  # Host header to send, None for 127.0.0.1:PORT
    tls_ca: Path | None = None  # https, verified with this CA certificate
    describe: str = ""  # one line for the report: what the column is
    files: dict[str, str] = field(default_factory=dict)  # config files worth keeping
    retry_markers: tuple[str, ...] = ("in use",)  # log text that means "try other ports"
    idle_fds: int = 0  # connections it keeps open by design between runs (a keep-alive pool)


def find_binary(chosen: str | None, name: str, package: str) -> str:
    """The absolute path of ``chosen`` (an option's value) or of ``name`` on PATH or in the
    sbin directories (not on a normal user's PATH); ``ToolMissing`` if there is none."""
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise ToolMissing(f"{chosen} not found or not executable (install {package})")
        return os.path.abspath(found)
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise ToolMissing(f"{name} not found (install {package}: bash benchmarks/e2e/setup.sh)")
    return os.path.abspath(found)
