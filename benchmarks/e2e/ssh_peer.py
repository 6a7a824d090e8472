"""The ``ssh`` column: OpenSSH remote forwarding, the tunnel most people use instead.

A throw-away ``sshd`` on a free loopback port, with its own config file, a generated host
key and key-only authentication for the current user (root on CI), no PAM, StrictModes off,
AES-128-GCM; the "client" is ``ssh -N -R 127.0.0.1:PUBLIC:127.0.0.1:ORIGIN``, so the load
generator hits PUBLIC on sshd's side and every request crosses the encrypted connection.
Nothing outside the peer's private directory is read or written, except that sshd needs its
privilege-separation directory (``/run/sshd``) when it runs as root: it is created if missing,
as Debian's service does.
"""

from __future__ import annotations

import os
import pwd

from .plans import PeerContext, Plan, ToolMissing, find_binary
from .procs import LOOPBACK, free_port, run_bounded

CIPHER = "aes128-gcm@openssh.com"
PRIVSEP_DIR = "/run/sshd"


def _keygen(keygen: str, path: str) -> None:
    status, out, err = run_bounded([keygen, "-q", "-t", "ed25519", "-N", "", "-f", path], 30)
    if status != 0:
        raise ToolMissing(f"ssh-keygen failed (status {status}): {(err or out).strip()[-300:]}")


def sshd_config(port: int, directory: str) -> str:
    root_login = "prohibit-password" if os.geteuid() == 0 else "no"
    return f"""\
# A throw-away sshd for the benchmark: loopback only, key-only, forwarding to loopback.
Port {port}
ListenAddress {LOOPBACK}
HostKey {directory}/host_key
PidFile {directory}/sshd.pid
AuthorizedKeysFile {directory}/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin {root_login}
AllowTcpForwarding remote
GatewayPorts no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PrintMotd no
UseDNS no
Ciphers {CIPHER}
LogLevel INFO
"""


def plan(ctx: PeerContext) -> Plan:
    sshd = find_binary(ctx.binaries.get("sshd"), "sshd", "openssh-server")
    ssh = find_binary(ctx.binaries.get("ssh"), "ssh", "openssh-client")
    keygen = find_binary(ctx.binaries.get("ssh-keygen"), "ssh-keygen", "openssh-client")
    if os.geteuid() == 0 and not os.path.isdir(PRIVSEP_DIR):
        os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
    directory = str(ctx.workdir)
    for name in ("host_key", "client_key"):
        if not os.path.exists(f"{directory}/{name}"):
            _keygen(keygen, f"{directory}/{name}")
    with open(f"{directory}/client_key.pub") as src:
        client_public = src.read()
    with open(f"{directory}/authorized_keys", "w") as dst:
        dst.write(client_public)
    sshd_port, public_port = free_port(), free_port()
    with open(f"{directory}/host_key.pub") as src:
        host_public = src.read().strip()
    with open(f"{directory}/known_hosts", "w") as dst:
        dst.write(f"[{LOOPBACK}]:{sshd_port} {host_public}\n")
    config = sshd_config(sshd_port, directory)
    with open(f"{directory}/sshd_config", "w") as dst:
        dst.write(config)
    user = pwd.getpwuid(os.geteuid()).pw_name
    client = [
        ssh,
        "-N",
        "-F",
        "/dev/null",  # no user or system config
        "-i",
        f"{directory}/client_key",
        "-p",
        str(sshd_port),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={directory}/known_hosts",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        f"Ciphers={CIPHER}",
        "-o",
        "LogLevel=ERROR",
        "-R",
        f"{LOOPBACK}:{public_port}:{LOOPBACK}:{ctx.origin_port}",
        f"{user}@{LOOPBACK}",
    ]
    return Plan(
        server=[sshd, "-D", "-e", "-f", f"{directory}/sshd_config"],
        server_port=sshd_port,
        client=client,
        public_port=public_port,
        describe=f"OpenSSH remote forwarding, {CIPHER}, key-only auth as {user}",
        files={"sshd_config": config},
        retry_markers=("in use", "forwarding failed"),
    )
