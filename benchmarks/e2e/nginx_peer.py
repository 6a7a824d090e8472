"""The ``nginx`` column: one well-optimised reverse-proxy hop to the same origin.

Not a tunnel: it measures what a single proxy hop costs, the practical floor for a tunnel's
two. ``worker_processes 1`` (the machine's cores are shared with the load generator, the
origin and the other columns), upstream keep-alive (``keepalive 64``, HTTP/1.1,
``Connection ""``), the access log off, request bodies streamed (no temp file) and responses
buffered in memory only, so neither direction touches the disk. Its own prefix, pid and temp
directories in the peer's private directory, ``daemon off``, the error log on stderr.
"""

from __future__ import annotations

import grp
import os
import pwd

from .plans import PeerContext, Plan, find_binary
from .procs import LOOPBACK, free_port

KEEPALIVE = 64  # idle upstream connections kept per worker


def nginx_config(port: int, origin_port: int, directory: str) -> str:
    user = ""
    if os.geteuid() == 0:  # the default worker user (nobody) could not enter the 0700 prefix
        entry = pwd.getpwuid(os.geteuid())
        user = f"user {entry.pw_name} {grp.getgrgid(entry.pw_gid).gr_name};\n"
    return f"""\
# A throw-away nginx for the benchmark: one plain reverse-proxy hop on loopback.
{user}worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
master_process on;
pid {directory}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    keepalive_requests 1000000;   # the tunnels never close a busy keep-alive connection
    client_max_body_size 0;       # the 100 MiB upload
    proxy_request_buffering off;  # stream request bodies, as a tunnel does
    proxy_max_temp_file_size 0;   # buffer responses in memory only
    upstream origin {{
        server {LOOPBACK}:{origin_port};
        keepalive {KEEPALIVE};
        keepalive_requests 1000000;
    }}
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def plan(ctx: PeerContext) -> Plan:
    nginx = find_binary(ctx.binaries.get("nginx"), "nginx", "nginx")
    directory = str(ctx.workdir)
    port = free_port()
    config = nginx_config(port, ctx.origin_port, directory)
    with open(f"{directory}/nginx.conf", "w") as dst:
        dst.write(config)
    # -e stderr: the error log before the config is read (the default path may be unwritable).
    command = [nginx, "-e", "stderr", "-p", f"{directory}/", "-c", f"{directory}/nginx.conf"]
    return Plan(
        server=command,
        server_port=port,
        public_port=port,
        describe="nginx reverse proxy, worker_processes 1, upstream keepalive 64, access log off",
        files={"nginx.conf": config},
        idle_fds=KEEPALIVE,
    )
