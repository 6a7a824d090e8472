"""ytun server | client | demo: a reverse tunnel for HTTP, WebSocket and TCP,
wire-compatible with koding/tunnel."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._alloc import tune_allocator
from ._version import __version__
from .demo import start_demo_app
from .errors import IdentifierRefusedError
from .settings import (
    LOG_LEVELS,
    SERVER_KEYS,
    ClientFile,
    ServerFile,
    UsageError,
    check_address,
    check_identifier,
    check_listen_address,
    check_network,
    check_virtual_host,
    load_client_file,
    load_server_file,
    read_identifier_file,
)
from .tunnel import Client, ClientStateChange, Server
from .tunnel.access import open_access_log
from .tunnel.addr import split_host_port
from .tunnel.limits import raise_fd_limit

logger = logging.getLogger("ytun")

#: Where ``ytun client`` looks for its identifier when no flag names one.
IDENTIFIER_VARIABLE = "YTUN_IDENTIFIER"

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
  ytun server --config /etc/ytun/server.toml
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
        "--server", metavar="HOST:PORT", help="the tunnel server (default: server in --config)"
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
        "--exit-on-refused",
        action=argparse.BooleanOptionalAction,
        help="exit with status 2 when the server does not know the identifier, instead of "
        "retrying (default: on)",
    )
    _log_level_flag(client)

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
    #: Keys given as flags: a reloaded file does not change them.
    flag_keys: frozenset[str]
    config_path: Path | None
    file: ServerFile | None
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


def server_config(args: argparse.Namespace) -> ServerConfig:
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
        flag_keys=frozenset(
            key for key in RELOADED_KEYS + RESTART_KEYS if getattr(args, key, None) is not None
        ),
        config_path=args.config,
        file=file,
        flag_hosts=flag_hosts,
        flag_tcp=flag_tcp,
    )


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

    def __init__(self, server: Server, config: ServerConfig) -> None:
        self.server = server
        self.config = config
        self.hosts: dict[str, str] = {}
        #: TCP route as configured -> (its identifier, the port it is bound to)
        self.tcp: dict[str, tuple[str, int]] = {}
        self._reloading = asyncio.Lock()

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
                bound = await self.server.add_addr(address, identifier)
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


async def start_server(config: ServerConfig) -> RunningServer:
    before, after = raise_fd_limit()
    if after != before:
        logger.debug("descriptor limit raised from %d to %d", before, after)
    try:
        access_log = open_access_log(config.access_log)
    except OSError as exc:
        raise UsageError(
            f"cannot open the access log {config.access_log}: {exc.strerror or exc}"
        ) from None
    server = Server(
        forwarded_headers=config.forwarded_headers,
        trust_forwarded=config.trust_forwarded,
        access_log=access_log,
        max_connections=config.max_connections,
        idle_timeout=config.idle_timeout,
        stream_timeout=config.stream_timeout,
        handshake_timeout=config.handshake_timeout,
    )
    running = RunningServer(server, config)
    # "" is every interface to asyncio and uvloop alike.
    await server.serve(config.listen_host or "", config.listen_port, ssl=config.ssl)
    hosts, tcp = config.routes(config.file)
    await running.apply_routes(hosts, tcp, at_start=True)
    if not hosts and not tcp:
        logger.warning("no hosts and no TCP routes: every client will be refused")
    return running


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


def client_config(args: argparse.Namespace, environ: dict[str, str]) -> ClientConfig:
    file: ClientFile | None = None
    if args.config is not None:
        file = load_client_file(args.config)
    server = _pick(args.server, file and file.server, None)
    if server is None:
        raise UsageError("no server: give --server HOST:PORT or server in --config")
    check_address(server, "--server")
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
    return ClientConfig(
        server=server,
        identifier=_client_identifier(args, environ, file),
        local=local,
        tcp_local=tcp_local,
        ssl=context,
        dial_timeout=_positive(
            _pick(args.dial_timeout, file and file.dial_timeout, DEFAULT_DIAL_TIMEOUT),
            "--dial-timeout",
        ),
        exit_on_refused=_pick(args.exit_on_refused, file and file.exit_on_refused, True),
        log_level=_pick(args.log_level, file and file.log_level, DEFAULT_LOG_LEVEL),
    )


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


def is_loopback(host: str) -> bool:
    """True when ``host`` names this machine, so nothing sent to it crosses a network."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: it may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def make_client(
    config: ClientConfig, on_state_change: Callable[[ClientStateChange], None]
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


async def server_main(config: ServerConfig) -> int:
    signals = StopSignals()
    signals.install()
    running = await start_server(config)
    server = running.server
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = asyncio.ensure_future(running.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    _print(_listening_line(config))
    await signals.graceful.wait()
    in_flight = server.in_flight
    if in_flight:
        logger.warning(
            "stopping: %d %s in flight, waiting up to %g s (a second signal stops at once)",
            in_flight,
            "request" if in_flight == 1 else "requests",
            config.grace,
        )
    return await signals.stop(server.close(grace=config.grace), lambda: server.close(grace=0))


async def client_main(config: ClientConfig) -> int:
    signals = StopSignals()
    signals.install()
    host, _ = split_host_port(config.server)
    if config.ssl is None and not is_loopback(host):
        logger.warning(
            "the identifier crosses the network in cleartext to %s; use --tls", config.server
        )
    last: list[ClientStateChange] = []
    client = make_client(config, last.append)
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
    main_coroutine: Coroutine[Any, Any, int]
    try:
        if command == "server":
            server = server_config(args)
            log_level = server.log_level
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
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _run(main_coroutine)
    except UsageError as exc:
        print(f"ytun {command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ytun {command}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
