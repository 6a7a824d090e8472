"""ytun server | client | hosts | tcp | clients | demo: a reverse tunnel for HTTP,
WebSocket and TCP, wire-compatible with koding/tunnel."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Any
from urllib.parse import urlsplit

from ._alloc import tune_allocator
from ._version import __version__
from .admin_commands import (
    ADMIN_COMMANDS,
    Registration,
    add_admin_commands,
    admin_command,
    admin_failure,
    admin_token,
    register,
    unregister,
)
from .cluster import Supervisor, Worker, WorkerSettings, listen_shared, reserve_port, sharing
from .cluster.hop import MIN_SECRET
from .cluster.node import Node
from .cluster.worker import WORKER_VARIABLE
from .control.admin import AdminApi
from .control.metrics import add_metrics_routes
from .demo import start_demo_app
from .errors import AdminError, IdentifierRefusedError, InspectorError, RegistryError
from .inspector import DEFAULT_BODY_LIMIT, DEFAULT_MAX_ENTRIES, Inspector
from .registry import MemoryRegistry, Registry, SqliteRegistry
from .registry.names import normalize_subdomain
from .registry.redis import RedisRegistry
from .settings import (
    ADMIN_TOKEN_VARIABLE,
    IDENTIFIER_VARIABLE,
    LOG_LEVELS,
    SERVER_KEYS,
    ClientFile,
    ServerFile,
    UsageError,
    check_address,
    check_admin_url_value,
    check_domain,
    check_identifier,
    check_listen_address,
    check_network,
    check_registry_url,
    check_servers,
    check_virtual_host,
    check_workers,
    load_client_file,
    load_server_file,
    read_identifier_file,
)
from .tunnel import Client, ClientStateChange, Server
from .tunnel.access import open_access_log
from .tunnel.addr import is_loopback, split_host_port
from .tunnel.limits import raise_fd_limit
from .tunnel.peers import Peers

logger = logging.getLogger("ytun")

#: Where ``ytun server --registry`` looks for the cluster secret when no file is named.
CLUSTER_SECRET_VARIABLE = "YTUN_CLUSTER_SECRET"

DEFAULT_LISTEN = "127.0.0.1:8000"
DEFAULT_LOG_LEVEL = "info"
DEFAULT_GRACE = 5.0
DEFAULT_STREAM_TIMEOUT = 10.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 120.0
DEFAULT_ACCESS_LOG = "stdout"
DEFAULT_DIAL_TIMEOUT = 10.0

__all__ = ["UsageError", "build_parser", "main"]


# -- flags ------------------------------------------------------------------------------

SERVER_EXAMPLES = """\
examples:
  ytun server --config /etc/ytun/server.toml --state /var/lib/ytun/state.db
  ytun server --listen 127.0.0.1:8000 --host app.localhost:8000=dev-secret
"""

CLIENT_EXAMPLES = f"""\
examples:
  {IDENTIFIER_VARIABLE}=dev-secret ytun client --server 127.0.0.1:8000 --local 127.0.0.1:3000
  ytun client --server tunnel.example.com:443 --tls --identifier-file ~/.ytun/id
"""

DEMO_EXAMPLES = """\
examples:
  ytun demo
  ytun demo --port 9000
"""

VISIBLE = "visible to every user of this machine in the process list"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or more seconds, got {text!r}")
    return value


def _log_level_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help=f"how much to log (default: {DEFAULT_LOG_LEVEL}, or log_level in --config)",
    )


def _config_flag(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help=f"TOML file with a [{command}] table; flags override it (default: none)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ytun", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ytun {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    formatter = argparse.RawDescriptionHelpFormatter

    server = commands.add_parser(
        "server",
        help="run the public tunnel server",
        description="Accept tunnel clients and route public HTTP, WebSocket and TCP traffic "
        "to them. SIGHUP reloads the hosts and TCP routes of --config; SIGINT or SIGTERM "
        "stops after the requests in flight (a second one stops at once).",
        epilog=SERVER_EXAMPLES,
        formatter_class=formatter,
    )
    _config_flag(server, "server")
    server.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address for the public side and the clients; :PORT is every interface "
        f"(default: {DEFAULT_LISTEN})",
    )
    server.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST=IDENTIFIER",
        help=f"route requests for HOST (NAME or NAME:PORT) to the client with IDENTIFIER; "
        f"repeatable; the identifier is {VISIBLE}: prefer hosts with identifier_file in "
        "--config (default: none)",
    )
    server.add_argument(
        "--tcp",
        action="append",
        default=[],
        metavar="ADDR=IDENTIFIER",
        help="listen on ADDR (HOST:PORT or :PORT) and tunnel its TCP connections to the "
        f"client with IDENTIFIER; repeatable; {VISIBLE} (default: none)",
    )
    server.add_argument(
        "--state",
        metavar="FILE",
        help="keep hosts and TCP routes in this SQLite file (identifiers hashed), so a "
        "restart keeps them; --host and --tcp routes are added to it (default: none, "
        "routes live in memory)",
    )
    server.add_argument(
        "--domain",
        metavar="NAME",
        help="the wildcard domain pointing at this server (*.NAME): subdomains are handed "
        "out under it, and names below a registered subdomain route to its client "
        "(default: none)",
    )
    server.add_argument(
        "--registry",
        metavar="URL",
        help="share hosts, TCP routes and who holds which client with other servers through "
        "Redis (redis://HOST:PORT/DB; needs ytun[redis]); needs --cluster-listen and a "
        "cluster secret (default: none)",
    )
    server.add_argument(
        "--cluster-listen",
        metavar="HOST:PORT",
        help="where the other servers of a --registry cluster reach this one, to forward "
        "requests for clients held here (default: none)",
    )
    server.add_argument(
        "--cluster-advertise",
        metavar="HOST:PORT",
        help="the address other servers dial for --cluster-listen, when that listens on "
        "every interface (default: --cluster-listen)",
    )
    server.add_argument(
        "--cluster-secret-file",
        metavar="FILE",
        help=f"a file holding the secret every server of the cluster shares (at least 16 "
        f"bytes), to authenticate forwarded connections; or ${CLUSTER_SECRET_VARIABLE} "
        "(default: none)",
    )
    server.add_argument(
        "--cluster-tls-ca",
        metavar="FILE",
        help="with --tls-cert, the hop between servers is TLS too: check the other servers' "
        "certificates against this CA bundle (default: the system's)",
    )
    server.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="serve the admin API (hosts, TCP routes, clients; JSON over HTTP) on this "
        "address, a listener of its own; an address other machines reach needs a token "
        "(default: none)",
    )
    server.add_argument(
        "--admin-token-file",
        metavar="FILE",
        type=Path,
        help=f"the admin API's bearer token, on one line (default: ${ADMIN_TOKEN_VARIABLE}, "
        "then admin_token_file in --config; without one the API is open to every user of "
        "this machine)",
    )
    server.add_argument(
        "--tls-cert", metavar="FILE", help="certificate chain (PEM) to serve TLS (default: none)"
    )
    server.add_argument(
        "--tls-key", metavar="FILE", help="private key (PEM) of --tls-cert (default: none)"
    )
    server.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="connections held at once; more are answered 503 "
        "(default: the descriptor limit, raised to its maximum at start, less 64)",
    )
    server.add_argument(
        "--forwarded-headers",
        action=argparse.BooleanOptionalAction,
        help="replace X-Forwarded-For/-Proto/-Host and Forwarded in requests with the "
        "server's own, and mark them with Via to answer loops 508; --no-forwarded-headers "
        "forwards request heads untouched (default: on)",
    )
    server.add_argument(
        "--trust-forwarded",
        action="append",
        metavar="CIDR",
        help="keep (and append to) the forwarding headers of requests from this network, "
        "e.g. a load balancer in front; repeatable (default: none, they are replaced)",
    )
    server.add_argument(
        "--access-log",
        metavar="off|stdout|FILE",
        help="one line per request, upgrade and TCP connection: off, stdout, stderr, or a "
        "file to append to (default: stdout)",
    )
    server.add_argument(
        "--idle-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="close public connections quiet for this long; 0 never "
        f"(default: {DEFAULT_IDLE_TIMEOUT:g})",
    )
    server.add_argument(
        "--stream-timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"wait this long for a client to open a stream (default: {DEFAULT_STREAM_TIMEOUT:g})",
    )
    server.add_argument(
        "--handshake-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="wait this long for a connecting client's handshake "
        f"(default: {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    server.add_argument(
        "--grace",
        type=_seconds,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, wait this long for requests in flight "
        f"(default: {DEFAULT_GRACE:g})",
    )
    server.add_argument(
        "--workers",
        metavar="N|auto",
        help="serve from N processes sharing the port (auto: one per CPU); a public "
        "connection is handed to the process holding its client (default: 1, one process)",
    )
    _log_level_flag(server)

    client = commands.add_parser(
        "client",
        help="run a tunnel client next to your service",
        description="Keep a tunnel to the server open and serve its requests from local "
        f"services. The identifier comes from --identifier, --identifier-file, "
        f"${IDENTIFIER_VARIABLE} or --config, in that order.",
        epilog=CLIENT_EXAMPLES,
        formatter_class=formatter,
    )
    _config_flag(client, "client")
    client.add_argument(
        "--server",
        action="append",
        metavar="HOST:PORT",
        help="the tunnel server; repeat it or give a comma list for the servers of one "
        "cluster: the next one is tried when one fails (default: server in --config)",
    )
    secret = client.add_mutually_exclusive_group()
    secret.add_argument(
        "--identifier",
        metavar="IDENTIFIER",
        help=f"the secret naming this client; {VISIBLE}: prefer --identifier-file or "
        f"${IDENTIFIER_VARIABLE} (default: none)",
    )
    secret.add_argument(
        "--identifier-file",
        metavar="FILE",
        type=Path,
        help=f"read the identifier from FILE (default: ${IDENTIFIER_VARIABLE}, then --config)",
    )
    client.add_argument(
        "--local",
        metavar="HOST:PORT",
        help="the local HTTP service (default: 127.0.0.1 and the port of the public Host)",
    )
    client.add_argument(
        "--tcp-local",
        action="append",
        default=[],
        metavar="PORT=ADDR",
        help="send TCP tunnels of public PORT to local ADDR; repeatable (default: 127.0.0.1:PORT)",
    )
    client.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        help="connect to the server over TLS (default: off, on with --tls-ca)",
    )
    client.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="CA bundle (PEM) to verify the server with (default: the system's)",
    )
    client.add_argument(
        "--dial-timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"give up a connection attempt after this long (default: {DEFAULT_DIAL_TIMEOUT:g})",
    )
    client.add_argument(
        "--register",
        metavar="URL",
        help="ask the server's admin API at URL for a host and its identifier before "
        "connecting, and print the public URL; with --identifier-file the identifier is "
        "written there and reused by the next runs, without it the host is deleted when "
        "the client stops (default: none)",
    )
    client.add_argument(
        "--subdomain",
        metavar="NAME",
        help="with --register: the subdomain to ask for (default: a random free one)",
    )
    client.add_argument(
        "--token-file",
        metavar="FILE",
        type=Path,
        help=f"with --register: the admin API's bearer token (default: ${ADMIN_TOKEN_VARIABLE}, "
        "then token_file in --config)",
    )
    client.add_argument(
        "--exit-on-refused",
        action=argparse.BooleanOptionalAction,
        help="exit with status 2 when the server does not know the identifier, instead of "
        "retrying (default: on)",
    )
    _inspector_flags(client)
    _log_level_flag(client)

    add_admin_commands(commands)

    demo = commands.add_parser(
        "demo",
        help="server, client and a sample app in one process",
        description="A server, a client and a small web app in one process, on loopback.",
        epilog=DEMO_EXAMPLES,
        formatter_class=formatter,
    )
    demo.add_argument("--port", type=int, default=8000, help="public port (default: 8000)")
    _log_level_flag(demo)
    return parser


def _mapping(value: str, what: str, shape: str, *, secret: bool = True) -> tuple[str, str]:
    # The first "=": identifiers may end in base64 padding, names and addresses hold none.
    left, sep, right = value.partition("=")
    if not sep or not left or not right:
        shown = _redacted(value) if secret else value
        raise UsageError(f"{what} must look like {shape}, got {shown!r}")
    return left, right


def _redacted(value: str) -> str:
    """``value`` without what follows its ``=``: that part may be a secret."""
    left, sep, _ = value.partition("=")
    return f"{left}=…" if sep else value


def _inspector_flags(client: argparse.ArgumentParser) -> None:
    client.add_argument(
        "--inspect",
        metavar="HOST:PORT",
        help="serve the request inspector (a web page of the last requests, with replay) "
        "on HOST:PORT, e.g. 127.0.0.1:4040 (default: off)",
    )
    client.add_argument(
        "--inspect-allow-remote",
        action=argparse.BooleanOptionalAction,
        help="let --inspect listen on an address other than loopback; whoever reaches it "
        "sees request bodies and can replay requests (default: off)",
    )
    client.add_argument(
        "--inspect-max-requests",
        type=_count,
        metavar="N",
        help=f"requests the inspector keeps (default: {DEFAULT_MAX_ENTRIES})",
    )
    client.add_argument(
        "--inspect-body-limit",
        type=_byte_count,
        metavar="BYTES",
        help=f"bytes of each body the inspector keeps (default: {DEFAULT_BODY_LIMIT})",
    )


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number above zero, got {text!r}")
    return int(text)


def _byte_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of bytes, got {text!r}")
    return int(text)


def _pick(flag: Any, from_file: Any, default: Any) -> Any:
    """A flag given beats the config file, which beats the built-in default."""
    if flag is not None:
        return flag
    return from_file if from_file is not None else default


def _tls_file(path: str | Path, what: str) -> str:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return str(path)


# -- the server -------------------------------------------------------------------------


@dataclass
class ServerConfig:
    """What ``ytun server`` runs with: flags over the config file over the defaults."""

    listen_host: str | None
    listen_port: int
    ssl: ssl.SSLContext | None
    forwarded_headers: bool
    trust_forwarded: tuple[str, ...]
    access_log: str
    max_connections: int | None
    idle_timeout: float | None
    stream_timeout: float
    handshake_timeout: float
    grace: float
    log_level: str
    #: Worker processes; 1 is one process, no supervising parent.
    workers: int
    #: Keys given as flags: a reloaded file does not change them.
    flag_keys: frozenset[str]
    config_path: Path | None
    file: ServerFile | None
    state: Path | None = None
    domain: str | None = None
    #: A shared registry (``redis://…``) and this node's hop listener, when clustered.
    registry: str | None = None
    cluster_listen: tuple[str | None, int] | None = None
    cluster_advertise: str | None = None
    cluster_secret: bytes = field(default=b"", repr=False)
    #: TLS on the hop (the server has a certificate): how the other nodes are checked.
    cluster_dial_ssl: SSLContext | None = None
    #: Where the admin API listens (host None: every interface), or None for no API.
    admin: tuple[str | None, int] | None = None
    admin_token: str | None = field(default=None, repr=False)
    # Identifiers: kept out of repr().
    flag_hosts: dict[str, str] = field(default_factory=dict, repr=False)
    flag_tcp: dict[str, str] = field(default_factory=dict, repr=False)

    def routes(self, file: ServerFile | None) -> tuple[dict[str, str], dict[str, str]]:
        """Hosts and TCP routes: the file's, with the flags' added over them."""
        # Host names match case-insensitively: "App.test" and "app.test" are one route.
        hosts = {host.lower(): owner for host, owner in (file.hosts if file else {}).items()}
        hosts.update((host.lower(), owner) for host, owner in self.flag_hosts.items())
        tcp = dict(file.tcp) if file is not None else {}
        tcp.update(self.flag_tcp)
        return hosts, tcp


def server_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServerConfig:
    environ = dict(os.environ) if environ is None else environ
    file = load_server_file(args.config) if args.config is not None else None
    flag_hosts: dict[str, str] = {}
    for value in args.host:
        host, identifier = _mapping(value, "--host", "HOST=IDENTIFIER")
        check_virtual_host(host, "--host")
        flag_hosts[host] = check_identifier(identifier, f"the identifier of --host {host}")
    flag_tcp: dict[str, str] = {}
    for value in args.tcp:
        address, identifier = _mapping(value, "--tcp", "ADDR=IDENTIFIER")
        check_listen_address(address, "--tcp")
        flag_tcp[address] = check_identifier(identifier, f"the identifier of --tcp {address}")
    listen = _pick(args.listen, file and file.listen, DEFAULT_LISTEN)
    listen_host, listen_port = check_listen_address(listen, "--listen")
    max_connections = _pick(args.max_connections, file and file.max_connections, None)
    if max_connections is not None and max_connections <= 0:
        raise UsageError("--max-connections must be positive")
    cert = _pick(args.tls_cert, file and file.tls_cert, None)
    key = _pick(args.tls_key, file and file.tls_key, None)
    context = None
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise UsageError("--tls-cert and --tls-key go together (tls_cert and tls_key)")
        context = _server_tls(cert, key)
    idle_timeout = _pick(args.idle_timeout, file and file.idle_timeout, DEFAULT_IDLE_TIMEOUT)
    trust_forwarded = _pick(args.trust_forwarded, file and file.trust_forwarded, [])
    for network in trust_forwarded:
        check_network(network, "--trust-forwarded")
    access_log = _pick(args.access_log, file and file.access_log, DEFAULT_ACCESS_LOG)
    if not access_log:
        raise UsageError("--access-log must be off, stdout, stderr or a file name")
    state: Path | None = Path(args.state) if args.state else (file.state if file else None)
    if args.state == "":
        raise UsageError("--state must name a file")
    domain = _pick(args.domain, file and file.domain, None)
    if domain is not None:
        domain = check_domain(domain, "--domain")
    workers = check_workers(_pick(args.workers, file and file.workers, 1), "--workers")
    if workers > 1 and context is not None:
        raise UsageError(
            "--workers needs a plain-TCP public port: a TLS session cannot move between "
            "processes (end TLS in front of ytun, or run one worker)"
        )
    if workers > 1 and state is not None:
        raise UsageError(
            "--workers cannot share one --state file (one process holds it); use one worker"
        )
    registry, cluster_listen, advertise, secret = _cluster_options(args, file, state, workers)
    cluster_dial_ssl = _cluster_tls(args, file, context, registry)
    admin, admin_token = _admin_listener(args, environ, file, (listen_host, listen_port))
    if admin is not None and workers > 1:
        raise UsageError(
            "--admin changes the routes of one process: with --workers each worker has its "
            "own; use one worker (or --registry, one process per server)"
        )
    return ServerConfig(
        listen_host=listen_host,
        listen_port=listen_port,
        ssl=context,
        forwarded_headers=_pick(args.forwarded_headers, file and file.forwarded_headers, True),
        trust_forwarded=tuple(trust_forwarded),
        access_log=access_log,
        max_connections=max_connections,
        idle_timeout=idle_timeout or None,  # 0: never
        stream_timeout=_positive(
            _pick(args.stream_timeout, file and file.stream_timeout, DEFAULT_STREAM_TIMEOUT),
            "--stream-timeout",
        ),
        handshake_timeout=_positive(
            _pick(
                args.handshake_timeout, file and file.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT
            ),
            "--handshake-timeout",
        ),
        grace=_pick(args.grace, file and file.grace, DEFAULT_GRACE),
        log_level=_pick(args.log_level, file and file.log_level, DEFAULT_LOG_LEVEL),
        workers=workers,
        flag_keys=frozenset(
            key for key in RELOADED_KEYS + RESTART_KEYS if getattr(args, key, None) is not None
        ),
        config_path=args.config,
        file=file,
        flag_hosts=flag_hosts,
        flag_tcp=flag_tcp,
        state=state,
        domain=domain,
        registry=registry,
        cluster_listen=cluster_listen,
        cluster_advertise=advertise,
        cluster_secret=secret,
        cluster_dial_ssl=cluster_dial_ssl,
        admin=admin,
        admin_token=admin_token,
    )


def _cluster_tls(
    args: argparse.Namespace,
    file: ServerFile | None,
    served: ssl.SSLContext | None,
    registry: str | None,
) -> ssl.SSLContext | None:
    """With a certificate, the hop is TLS: how this node checks the others' certificates."""
    ca = args.cluster_tls_ca or (file.cluster_tls_ca if file else None)
    if ca is not None and (served is None or registry is None):
        raise UsageError("--cluster-tls-ca needs --registry and --tls-cert/--tls-key")
    if served is None or registry is None:
        return None
    if ca is not None:
        _tls_file(ca, "the cluster CA bundle")
    try:
        return ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot use the cluster CA bundle {ca}: {exc}") from None


def _cluster_options(
    args: argparse.Namespace, file: ServerFile | None, state: Path | None, workers: int
) -> tuple[str | None, tuple[str | None, int] | None, str | None, bytes]:
    """--registry, --cluster-listen, --cluster-advertise and the secret, checked together."""
    registry = _pick(args.registry, file and file.registry, None)
    listen = _pick(args.cluster_listen, file and file.cluster_listen, None)
    advertise = _pick(args.cluster_advertise, file and file.cluster_advertise, None)
    secret_file = args.cluster_secret_file or (file.cluster_secret_file if file else None)
    if registry is None:
        if listen or advertise or secret_file:
            raise UsageError("--cluster-listen, --cluster-advertise and the secret need --registry")
        return None, None, None, b""
    check_registry_url(registry, "--registry")
    if state is not None:
        raise UsageError("--registry and --state are two places for the routes: give one")
    if workers > 1:
        raise UsageError("--registry runs one process per server: give --workers 1")
    if listen is None:
        raise UsageError("--registry needs --cluster-listen HOST:PORT for the other servers")
    address = check_listen_address(listen, "--cluster-listen")
    if advertise is not None:
        check_listen_address(advertise, "--cluster-advertise")
    elif address[0] in (None, "0.0.0.0", "::"):
        raise UsageError(
            "--cluster-listen listens on every interface: give --cluster-advertise HOST:PORT, "
            "the address the other servers dial"
        )
    else:
        advertise = listen
    if secret_file is not None:
        try:
            secret = Path(secret_file).read_bytes().strip()
        except OSError as exc:
            raise UsageError(
                f"cannot read the cluster secret file {secret_file}: {exc.strerror or exc}"
            ) from None
    else:
        secret = os.environ.get(CLUSTER_SECRET_VARIABLE, "").strip().encode()
    if len(secret) < MIN_SECRET:
        raise UsageError(
            f"--registry needs a cluster secret of at least {MIN_SECRET} bytes: "
            f"--cluster-secret-file FILE or ${CLUSTER_SECRET_VARIABLE}"
        )
    return registry, address, advertise, secret


def _admin_listener(
    args: argparse.Namespace,
    environ: dict[str, str],
    file: ServerFile | None,
    listen: tuple[str | None, int],
) -> tuple[tuple[str | None, int] | None, str | None]:
    """The admin API's address and token; refused beyond loopback without a token."""
    value = _pick(args.admin, file and file.admin, None)
    if value is None:
        if args.admin_token_file is not None:
            raise UsageError("--admin-token-file goes with --admin HOST:PORT")
        return None, None
    host, port = check_listen_address(value, "--admin")
    if (host, port) == listen:
        raise UsageError(
            f"--admin {value} is the public listener's address: the admin API needs its own"
        )
    token = admin_token(
        args.admin_token_file,
        "--admin-token-file",
        environ,
        file.admin_token_file if file else None,
        "admin_token_file",
    )
    if token is None and (host is None or not is_loopback(host)):
        raise UsageError(
            f"--admin {value} is reachable from other machines, and anyone who reaches the "
            f"admin API owns the tunnel: give --admin-token-file FILE or ${ADMIN_TOKEN_VARIABLE}, "
            "or listen on a loopback address such as 127.0.0.1"
        )
    return (host, port), token


def _positive(value: float, what: str) -> float:
    if value <= 0:
        raise UsageError(f"{what} must be more than zero seconds")
    return value


def _server_tls(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    _tls_file(cert, "the TLS certificate")
    _tls_file(key, "the TLS key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    def no_password() -> str:
        # Without this OpenSSL would ask on the terminal, which a service does not have.
        raise UsageError(f"the TLS key {key} is encrypted; ytun needs it without a passphrase")

    try:
        context.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        raise UsageError(
            f"cannot use the TLS certificate {cert} with the key {key}: {exc.reason or exc}"
        ) from None
    return context


#: Server keys a reload applies at once (hosts and tcp aside).
RELOADED_KEYS = ("log_level", "grace")
#: Routes (hosts, TCP) are applied by every reload, key by key.
ROUTE_KEYS = ("hosts", "tcp")
#: Server keys fixed at start: a reload that changes them says they wait for a restart.
RESTART_KEYS = tuple(
    key for key in SERVER_KEYS if key not in RELOADED_KEYS and key not in ROUTE_KEYS
)


class RunningServer:
    """A listening server and the routes it was given, so a reload can apply the change."""

    def __init__(
        self,
        server: Server,
        config: ServerConfig,
        *,
        reuse_port: bool = False,
        tcp_listen: bool = True,
    ) -> None:
        self.server = server
        self.config = config
        #: A worker shares its TCP route ports with the other workers (SO_REUSEPORT)...
        self.reuse_port = reuse_port
        #: ...or, sharing an inherited listener, only routes them (worker 0 listens).
        self.tcp_listen = tcp_listen
        self.hosts: dict[str, str] = {}
        #: TCP route as configured -> (its identifier, the port it is bound to)
        self.tcp: dict[str, tuple[str, int]] = {}
        #: The admin API's listener (--admin), if any.
        self.admin: asyncio.AbstractServer | None = None
        self._reloading = asyncio.Lock()
        #: This server's place among the nodes of a --registry cluster.
        self.node: Node | None = None

    async def apply_routes(
        self, hosts: dict[str, str], tcp: dict[str, str], *, at_start: bool
    ) -> list[str]:
        """Make the server's routes ``hosts`` and ``tcp``; returns what changed, in words
        (host names and addresses only: identifiers are secrets). At start a TCP address
        that cannot be bound is fatal; on reload it is logged and the rest applies."""
        changes: list[str] = []
        for host in sorted(set(self.hosts) - set(hosts)):
            self.server.delete_host(host)
            del self.hosts[host]
            changes.append(f"-host {host}")
        for host, identifier in hosts.items():
            if self.hosts.get(host) != identifier:
                self.server.add_host(host, identifier)
                changes.append(f"{'~' if host in self.hosts else '+'}host {host}")
                self.hosts[host] = identifier
        for address in sorted(set(self.tcp) - set(tcp)):
            _, port = self.tcp.pop(address)
            self.server.delete_addr(port)
            changes.append(f"-tcp {address}")
        for address, identifier in tcp.items():
            current = self.tcp.get(address)
            if current is not None:
                if current[0] != identifier:  # same listener, new owner
                    self.server.registry.add_addr(current[1], identifier)
                    self.tcp[address] = (identifier, current[1])
                    changes.append(f"~tcp {address}")
                continue
            try:
                bound = await self.server.add_addr(
                    address, identifier, reuse_port=self.reuse_port, listen=self.tcp_listen
                )
            except OSError as exc:
                if at_start:
                    raise OSError(
                        exc.errno, f"cannot listen on {address}: {exc.strerror or exc}"
                    ) from exc
                logger.error("cannot listen on %s: %s", address, exc.strerror or exc)
                continue
            self.tcp[address] = (identifier, bound[1])
            logger.info("tunnelling TCP on %s:%d", *bound)
            changes.append(f"+tcp {address}")
        return changes

    async def reload(self) -> None:
        """Re-read the config file: hosts and TCP routes change in place (connected
        clients stay); a file that cannot be used changes nothing."""
        path = self.config.config_path
        if path is None:
            logger.warning("SIGHUP: nothing to reload, the server runs without --config")
            return
        async with self._reloading:
            try:
                file = load_server_file(path)
            except UsageError as exc:
                logger.error("reload failed, the running configuration stays: %s", exc)
                return
            hosts, tcp = self.config.routes(file)
            changes = await self.apply_routes(hosts, tcp, at_start=False)
            flags = self.config.flag_keys
            if file.log_level is not None and "log_level" not in flags:
                logging.getLogger().setLevel(file.log_level.upper())
            if "grace" not in flags:
                self.config.grace = _pick(None, file.grace, DEFAULT_GRACE)
            restart = [
                key
                for key in RESTART_KEYS
                if key not in flags and getattr(self.config.file, key, None) != getattr(file, key)
            ]
            if restart:
                logger.warning(
                    "%s: %s changed; that takes effect when the server restarts",
                    path,
                    ", ".join(restart),
                )
            self.config.file = file
            logger.info("reloaded %s: %s", path, " ".join(changes) or "no route changed")


async def start_server(config: ServerConfig, worker: Worker | None = None) -> RunningServer:
    before, after = raise_fd_limit()
    if after != before:
        logger.debug("descriptor limit raised from %d to %d", before, after)
    try:
        access_log = open_access_log(config.access_log)
    except OSError as exc:
        raise UsageError(
            f"cannot open the access log {config.access_log}: {exc.strerror or exc}"
        ) from None
    node: Node | None = None
    if config.registry is not None:
        node = await start_node(config)
        registry: Registry = node.registry
    else:
        registry = open_registry(config.state, worker.settings.salt if worker is not None else "")
    peers: Peers | None = node.peers if node is not None else None
    if worker is not None:
        peers = worker.peers
    if access_log is not None and worker is not None:
        access_log.shared = True  # every worker writes to the same place
    server = Server(
        registry=registry,
        domain=config.domain,
        forwarded_headers=config.forwarded_headers,
        trust_forwarded=config.trust_forwarded,
        access_log=access_log,
        max_connections=config.max_connections,
        idle_timeout=config.idle_timeout,
        stream_timeout=config.stream_timeout,
        handshake_timeout=config.handshake_timeout,
        peers=peers,
        via_mark=worker.settings.via_mark.encode() if worker is not None else None,
    )
    inherited = worker.settings.listen_fds if worker is not None else ()
    running = RunningServer(
        server,
        config,
        reuse_port=worker is not None and not inherited,
        tcp_listen=worker is None or worker.settings.listens_on_tcp_routes,
    )
    running.node = node
    try:
        for fd in inherited:  # the parent's listener, shared by every worker
            await server.serve(sock=socket.socket(fileno=fd), ssl=config.ssl)
        if not inherited:
            # "" is every interface to asyncio and uvloop alike.
            await server.serve(
                config.listen_host or "",
                config.listen_port,
                ssl=config.ssl,
                reuse_port=worker is not None,
            )
        if worker is not None:
            worker.serve(server.adopt)
        hosts, tcp = config.routes(config.file)
        await running.apply_routes(hosts, tcp, at_start=True)
        if node is not None:
            await server.flush()
            await node.attach(server)
        if config.admin is not None:
            api = admin_api(server, config)
            # /metrics behind the token, /healthz and /readyz open to probes
            metrics = add_metrics_routes(api.router, server)
            if node is not None:
                metrics.add_counters(node.counters)
            running.admin = await _serve_admin(api, config.admin)
    except BaseException:
        if node is not None:
            await node.close()
        registry.close()
        raise
    if (
        not server.hosts()
        and not server.tcp_routes()
        and (worker is None or worker.settings.node == "0")
    ):
        logger.warning("no hosts and no TCP routes: every client will be refused")
    if config.state is not None:
        await _listen_stored_tcp_routes(server, config)
    return running


async def start_node(config: ServerConfig) -> Node:
    """The shared registry, loaded, and this server's place among the nodes (its hop
    listener is bound here, so a busy port stops the server before anything else)."""
    assert config.registry is not None and config.cluster_listen is not None
    assert config.cluster_advertise is not None
    registry = RedisRegistry(config.registry)
    host, port = config.cluster_listen
    try:
        listen = socket.create_server((host or "", port))
    except OSError as exc:
        registry.close()
        raise OSError(
            exc.errno, f"cannot listen on --cluster-listen: {exc.strerror or exc}"
        ) from exc
    node = Node(
        registry,
        config.cluster_secret,
        listen,
        config.cluster_advertise,
        listen_ssl=config.ssl if config.cluster_dial_ssl is not None else None,
        dial_ssl=config.cluster_dial_ssl,
    )
    try:
        await registry.start()
    except BaseException:
        listen.close()
        raise
    logger.info(
        "node %s: registry %s (%d hosts, %d TCP routes), cluster listener %s (%s)",
        registry.node,
        registry.safe_url,
        len(registry.hosts()),
        len(registry.tcp_routes()),
        config.cluster_advertise,
        "TLS" if config.cluster_dial_ssl is not None else "plain TCP",
    )
    return node


def admin_api(server: Server, config: ServerConfig) -> AdminApi:
    """The admin API of ``server``; its URLs are those of the public listener."""
    return AdminApi(
        server,
        token=config.admin_token,
        public_scheme="https" if config.ssl else "http",
        public_port=config.listen_port,
        tcp_host=config.listen_host or "",
    )


async def _serve_admin(api: AdminApi, address: tuple[str | None, int]) -> asyncio.AbstractServer:
    host, port = address
    try:
        return await api.serve(host or "", port)
    except OSError as exc:
        shown = _address_text(host, port)
        raise OSError(
            exc.errno, f"cannot listen on the admin address {shown}: {exc.strerror or exc}"
        ) from exc


def _address_text(host: str | None, port: int) -> str:
    if host is None:
        return f"*:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_registry(state: Path | None, salt: str = "") -> Registry:
    """The SQLite registry of ``--state`` (a RegistryError says why it cannot be used),
    or routes in memory (with ``salt``, hex, when the workers of one server share it)."""
    if state is None:
        return MemoryRegistry(salt=bytes.fromhex(salt) if salt else None)
    registry = SqliteRegistry(state)
    logger.info(
        "state %s: %d hosts, %d TCP routes",
        state,
        len(registry.hosts()),
        len(registry.tcp_routes()),
    )
    return registry


async def _listen_stored_tcp_routes(server: Server, config: ServerConfig) -> None:
    """Port routes kept in --state (added with the admin API, or by an earlier config) are
    listened on again, on the public listener's host, like ``POST /tcp``. They are not
    the config's routes, so a reload leaves them alone."""
    for port in await server.listen_stored_tcp(config.listen_host or ""):
        logger.info("listening again on the stored TCP route :%d", port)


def _admin_line(config: ServerConfig) -> str:
    assert config.admin is not None
    where = _address_text(*config.admin)
    if config.admin_token:
        return f"ytun admin API on http://{where} (bearer token required)"
    return f"ytun admin API on http://{where} (no token: open to every user of this machine)"


def _listening_line(config: ServerConfig) -> str:
    scheme = "https" if config.ssl else "http"
    if config.listen_host is None:
        return f"ytun server listening on {scheme}://*:{config.listen_port} (every interface)"
    host = f"[{config.listen_host}]" if ":" in config.listen_host else config.listen_host
    return f"ytun server listening on {scheme}://{host}:{config.listen_port}"


# -- the client -------------------------------------------------------------------------


@dataclass
class ClientConfig:
    """What ``ytun client`` runs with: flags over the environment over the config file."""

    server: str
    identifier: str = field(repr=False)
    local: str | None
    tcp_local: dict[int, str]
    ssl: ssl.SSLContext | None
    dial_timeout: float
    exit_on_refused: bool
    log_level: str
    #: --register: ask the admin API for a host first (None: the identifier is given).
    registration: Registration | None = None
    inspect: tuple[str | None, int] | None = None  # where to serve the inspector
    inspect_allow_remote: bool = False
    inspect_max_requests: int = DEFAULT_MAX_ENTRIES
    inspect_body_limit: int = DEFAULT_BODY_LIMIT


def client_config(args: argparse.Namespace, environ: dict[str, str]) -> ClientConfig:
    file: ClientFile | None = None
    if args.config is not None:
        file = load_client_file(args.config)
    server = _pick(",".join(args.server) if args.server else None, file and file.server, None)
    if server is None:
        raise UsageError("no server: give --server HOST:PORT or server in --config")
    server = check_servers(server, "--server")
    local = _pick(args.local, file and file.local, None)
    if local is not None:
        check_address(local, "--local")
    tcp_local = dict(file.tcp_local) if file is not None else {}
    for value in args.tcp_local:
        port, address = _mapping(value, "--tcp-local", "PORT=ADDR", secret=False)
        if not port.isdigit() or not 0 < int(port) <= 0xFFFF:
            raise UsageError(f"--tcp-local port must be a port number, got {port!r}")
        tcp_local[int(port)] = check_address(address, "--tcp-local")
    tls_ca: str | Path | None = args.tls_ca
    if tls_ca is None and file is not None:
        tls_ca = file.tls_ca
    tls = _pick(args.tls, file and file.tls, tls_ca is not None)
    context = None
    if tls:
        if tls_ca is not None:
            _tls_file(tls_ca, "the TLS CA bundle")
        try:
            context = ssl.create_default_context(cafile=tls_ca)
        except ssl.SSLError as exc:
            raise UsageError(
                f"cannot use the TLS CA bundle {tls_ca}: {exc.reason or exc}"
            ) from None
    registration = _registration(args, environ, file, context if tls_ca is not None else None)
    if registration is None:
        identifier = _client_identifier(args, environ, file)
    elif registration.reused:
        assert registration.identifier_file is not None
        identifier = read_identifier_file(registration.identifier_file, "the identifier file")
    else:
        identifier = ""  # asked for when the client starts
    return ClientConfig(
        server=server,
        identifier=identifier,
        registration=registration,
        local=local,
        tcp_local=tcp_local,
        ssl=context,
        dial_timeout=_positive(
            _pick(args.dial_timeout, file and file.dial_timeout, DEFAULT_DIAL_TIMEOUT),
            "--dial-timeout",
        ),
        exit_on_refused=_pick(args.exit_on_refused, file and file.exit_on_refused, True),
        log_level=_pick(args.log_level, file and file.log_level, DEFAULT_LOG_LEVEL),
        **_inspector_config(args, file),
    )


def _registration(
    args: argparse.Namespace,
    environ: dict[str, str],
    file: ClientFile | None,
    context: ssl.SSLContext | None,
) -> Registration | None:
    url = _pick(args.register, file and file.register, None)
    subdomain = _pick(args.subdomain, file and file.subdomain, None)
    if url is None:
        if subdomain is not None or args.token_file is not None:
            raise UsageError("--subdomain and --token-file go with --register URL")
        return None
    check_admin_url_value(url, "--register")
    if args.identifier is not None:
        raise UsageError(
            "--register asks the server for an identifier: drop --identifier, or drop "
            "--register to use the one given"
        )
    if subdomain is not None:
        try:
            subdomain = normalize_subdomain(subdomain)
        except ValueError as exc:
            raise UsageError(f"--subdomain: {exc}") from None
    identifier_file: Path | None = args.identifier_file
    if identifier_file is None and file is not None:
        identifier_file = file.identifier_file
    if (
        identifier_file is not None
        and not identifier_file.exists()
        and not identifier_file.parent.is_dir()
    ):
        raise UsageError(
            f"cannot keep the identifier in {identifier_file}: its directory does not exist"
        )
    token = admin_token(
        args.token_file, "--token-file", environ, file.token_file if file else None, "token_file"
    )
    return Registration(
        url=url,
        token=token,
        subdomain=subdomain,
        identifier_file=identifier_file,
        reused=identifier_file is not None and identifier_file.exists(),
        ssl=context,
    )


def _inspector_config(args: argparse.Namespace, file: ClientFile | None) -> dict[str, Any]:
    address = _pick(args.inspect, file and file.inspect, None)
    allow_remote = _pick(args.inspect_allow_remote, file and file.inspect_allow_remote, False)
    inspect = None
    if address is not None:
        inspect = check_listen_address(address, "--inspect")
        host = inspect[0]
        if not allow_remote and (host is None or not is_loopback(host)):
            raise UsageError(
                f"--inspect {address} is reachable from other machines, and the inspector "
                "shows request bodies and replays requests: use 127.0.0.1:PORT, or add "
                "--inspect-allow-remote"
            )
    return {
        "inspect": inspect,
        "inspect_allow_remote": allow_remote,
        "inspect_max_requests": _pick(
            args.inspect_max_requests, file and file.inspect_max_requests, DEFAULT_MAX_ENTRIES
        ),
        "inspect_body_limit": _pick(
            args.inspect_body_limit, file and file.inspect_body_limit, DEFAULT_BODY_LIMIT
        ),
    }


def _client_identifier(
    args: argparse.Namespace, environ: dict[str, str], file: ClientFile | None
) -> str:
    # The command line, then the environment, then the file: the nearer to this run wins.
    if args.identifier is not None:
        return check_identifier(args.identifier, "--identifier")
    if args.identifier_file is not None:
        return read_identifier_file(args.identifier_file, "--identifier-file")
    if IDENTIFIER_VARIABLE in environ:
        return check_identifier(environ[IDENTIFIER_VARIABLE], f"${IDENTIFIER_VARIABLE}")
    if file is not None and file.identifier is not None:
        return file.identifier
    raise UsageError(
        f"no identifier: give --identifier-file FILE, ${IDENTIFIER_VARIABLE}, or identifier_file "
        f"in --config (--identifier works too, but is {VISIBLE})"
    )


def make_client(
    config: ClientConfig,
    on_state_change: Callable[[ClientStateChange], None],
    inspector: Inspector | None = None,
) -> Client:
    return Client(
        config.server,
        config.identifier,
        local_addr=config.local,
        tcp_local=config.tcp_local,
        ssl=config.ssl,
        dial_timeout=config.dial_timeout,
        exit_on_refused=config.exit_on_refused,
        on_state_change=on_state_change,
        inspector=inspector,
    )


# -- running until told to stop ---------------------------------------------------------


class StopSignals:
    """SIGINT and SIGTERM: the first asks for a graceful stop, the second for one at once."""

    def __init__(self) -> None:
        self.graceful = asyncio.Event()
        self.immediate = asyncio.Event()
        self.last = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: int) -> None:
        self.last = sig
        if self.graceful.is_set():
            self.immediate.set()
        else:
            self.graceful.set()

    async def stop(
        self, graceful: Coroutine[Any, Any, None], at_once: Callable[[], Coroutine[Any, Any, None]]
    ) -> int:
        """Run ``graceful``; a second signal cancels it and runs ``at_once``. Returns the
        exit status: 0, or 128 + the signal number after a stop at once."""
        closing = asyncio.ensure_future(graceful)
        forced = asyncio.ensure_future(self.immediate.wait())
        await asyncio.wait([closing, forced], return_when=asyncio.FIRST_COMPLETED)
        if closing.done():
            forced.cancel()
            closing.result()
            return 0
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        logger.warning("second signal: stopping at once")
        await at_once()
        return 128 + self.last


def _print(line: str) -> None:
    print(line, flush=True)


async def server_main(config: ServerConfig, settings: WorkerSettings | None = None) -> int:
    signals = StopSignals()
    signals.install()
    worker = None
    if settings is not None:  # one of --workers N, under a supervising parent
        worker = Worker(settings)
        config.listen_port = settings.port
        await worker.join()
    running = await start_server(config, worker)
    server = running.server
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = asyncio.ensure_future(running.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    if worker is None:
        _print(_listening_line(config))
        if running.admin is not None:
            _print(_admin_line(config))
        await signals.graceful.wait()
    else:
        worker.ready()
        parent_gone = asyncio.ensure_future(worker.parent_gone.wait())
        stopping = asyncio.ensure_future(signals.graceful.wait())
        await asyncio.wait([parent_gone, stopping], return_when=asyncio.FIRST_COMPLETED)
        parent_gone.cancel()
        stopping.cancel()
        if worker.parent_gone.is_set() and not signals.graceful.is_set():
            logger.warning("the supervising process is gone; stopping")
        worker.stop_taking()
    if running.admin is not None:
        running.admin.close()
    in_flight = server.in_flight
    if in_flight:
        logger.warning(
            "stopping: %d %s in flight, waiting up to %g s (a second signal stops at once)",
            in_flight,
            "request" if in_flight == 1 else "requests",
            config.grace,
        )
    if not signals.graceful.is_set():
        signals.graceful.set()  # a signal from now on stops at once
    try:
        status = await signals.stop(server.close(grace=config.grace), lambda: server.close(grace=0))
    finally:
        if running.node is not None:
            await running.node.close()  # gives up its clients' records at once
        server.registry.close()
    if worker is not None:
        worker.close()
    return status


async def supervisor_main(config: ServerConfig, argv: list[str]) -> int:
    """``--workers N``: this process only supervises N worker processes."""
    # Held while the workers come and go: a busy port is found here, at once; port 0
    # becomes one port for all; no other user can take it. With SO_REUSEPORT it is only
    # bound (the workers listen), else it listens and the workers inherit it.
    shared = sharing() == "inherit"
    host = config.listen_host or ""
    reserved = (
        listen_shared(host, config.listen_port)
        if shared
        else reserve_port(host, config.listen_port)
    )
    config.listen_port = reserved[0].getsockname()[1]

    def ready() -> None:
        _print(f"{_listening_line(config)} ({config.workers} worker processes)")

    supervisor = Supervisor(
        argv,
        config.workers,
        port=config.listen_port,
        via_mark="ytun-" + secrets.token_hex(8),
        grace=config.grace,
        on_ready=ready,
        listeners=reserved if shared else (),
    )
    try:
        return await supervisor.run()
    finally:
        for sock in reserved:
            sock.close()


async def client_main(config: ClientConfig) -> int:
    signals = StopSignals()
    signals.install()
    for address in config.server.split(","):
        host, _ = split_host_port(address)
        if config.ssl is None and not is_loopback(host):
            logger.warning(
                "the identifier crosses the network in cleartext to %s; use --tls", address
            )
    inspector = await _start_inspector(config)
    try:
        return await _registered_run(config, signals, inspector)
    finally:
        if inspector is not None:
            await inspector.close()


async def _registered_run(
    config: ClientConfig, signals: StopSignals, inspector: Inspector | None
) -> int:
    """Run the client, first asking the admin API for a host with --register."""
    registration = config.registration
    if registration is None:
        return await _run_client(config, signals, inspector)
    if registration.reused:
        _print(
            f"ytun client: using the identifier in {registration.identifier_file}, "
            "registered before (`ytun hosts ls` lists the hosts)"
        )
        return await _run_client(config, signals, inspector)
    url = urlsplit(registration.url)
    if registration.token and url.scheme == "http" and not is_loopback(url.hostname or ""):
        logger.warning(
            "the admin token crosses the network in cleartext to %s; use https",
            url.hostname,
        )
    answer = await asyncio.to_thread(register, registration)
    config.identifier = answer["identifier"]
    _print(f"ytun client: public URL {answer['url']}")
    try:
        return await _run_client(config, signals, inspector)
    finally:
        if registration.identifier_file is None:  # this run's host goes with it
            await asyncio.to_thread(unregister, registration, answer["host"])


async def _start_inspector(config: ClientConfig) -> Inspector | None:
    if config.inspect is None:
        return None
    inspector = Inspector(config.inspect_max_requests, config.inspect_body_limit)
    host, port = config.inspect
    try:
        await inspector.start(host or "", port, allow_remote=config.inspect_allow_remote)
    except InspectorError as exc:
        raise OSError(str(exc)) from None
    _print(f"ytun inspector on {inspector.url}")
    return inspector


async def _run_client(
    config: ClientConfig, signals: StopSignals, inspector: Inspector | None
) -> int:
    last: list[ClientStateChange] = []
    client = make_client(config, last.append, inspector)
    task = asyncio.ensure_future(client.start())
    stopping = asyncio.ensure_future(signals.graceful.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    if task.done():  # it gave up by itself
        stopping.cancel()
        task.result()
        if last and isinstance(last[-1].error, IdentifierRefusedError):
            raise UsageError(
                "the server does not know this identifier; check it, or the server's hosts "
                "and TCP routes (--no-exit-on-refused keeps retrying)"
            )
        return 1
    status = await signals.stop(client.close(grace=5), lambda: client.close(grace=0))
    await task
    return status


async def demo_main(port: int) -> int:
    signals = StopSignals()
    signals.install()
    app = await start_demo_app()
    app_port = app.sockets[0].getsockname()[1]
    identifier = secrets.token_urlsafe(16)
    server = Server()
    server.add_host(f"demo.localhost:{port}", identifier)
    server.add_host("demo.localhost", identifier)
    await server.serve("127.0.0.1", port)
    client = Client(f"127.0.0.1:{port}", identifier, local_addr=f"127.0.0.1:{app_port}")
    task = asyncio.ensure_future(client.start())
    await client.wait_connected(timeout=10)
    _print(f"ytun demo: open http://demo.localhost:{port}/  (Ctrl-C to stop)")
    await signals.graceful.wait()
    await client.close(grace=2)
    await task
    await server.close(grace=2)
    app.close()
    return 0


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed, else on the stock asyncio loop."""
    tune_allocator()  # bulk reads: keep the heap's pages (see ytun._alloc)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    status: int = uvloop.run(main)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # nothing asked: explain, and fail any script that meant something else
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    command = args.command
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if command in ADMIN_COMMANDS:
        try:
            return admin_command(args, dict(os.environ))
        except UsageError as exc:
            print(f"ytun {command}: {exc}", file=sys.stderr)
            return 2
        except AdminError as exc:
            print(f"ytun {command}: {admin_failure(exc)}", file=sys.stderr)
            return 1
    main_coroutine: Coroutine[Any, Any, int]
    try:
        if command == "server":
            server = server_config(args)
            log_level = server.log_level
            try:
                worker = WorkerSettings.from_environ(os.environ)
            except (ValueError, TypeError):
                raise UsageError(
                    f"${WORKER_VARIABLE} is unreadable: ytun server --workers sets it for its "
                    "worker processes; unset it"
                ) from None
            if worker is not None:
                log_format = (
                    f"%(asctime)s %(levelname)s %(name)s[worker {worker.node}]: %(message)s"
                )
                main_coroutine = server_main(server, worker)
            elif server.workers > 1:
                main_coroutine = supervisor_main(server, argv)
            else:
                main_coroutine = server_main(server)
        elif command == "client":
            client = client_config(args, dict(os.environ))
            log_level = client.log_level
            main_coroutine = client_main(client)
        else:
            log_level = args.log_level or DEFAULT_LOG_LEVEL
            main_coroutine = demo_main(args.port)
    except UsageError as exc:
        print(f"ytun {command}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format=log_format)
    try:
        return _run(main_coroutine)
    except UsageError as exc:
        print(f"ytun {command}: {exc}", file=sys.stderr)
        return 2
    except RegistryError as exc:
        print(f"ytun {command}: {exc}", file=sys.stderr)
        return 1
    except AdminError as exc:
        print(f"ytun {command}: {admin_failure(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ytun {command}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
