"""The config file of ``ytun server --config`` and ``ytun client --config`` (TOML), and the
checks its values share with the command line.

A file holds a ``[server]`` table, a ``[client]`` table, or both; each command reads only
its own. Every key is named after the flag it stands for (``--tls-cert`` is ``tls_cert``),
plus the tables ``hosts`` and ``tcp`` (server) and ``tcp_local`` (client). Relative paths
in a file are relative to the file, so a server started from any directory finds them.
``examples/server.toml`` and ``examples/client.toml`` show every key.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .control.adminclient import check_admin_url
from .errors import InvalidHostError
from .registry.names import normalize_host, normalize_name
from .tunnel.addr import split_host_port

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

LOG_LEVELS = ("debug", "info", "warning", "error")
#: Where ``ytun client`` looks for its identifier when no flag names one.
IDENTIFIER_VARIABLE = "YTUN_IDENTIFIER"
#: The admin API's bearer token, for the server and for the commands that call the API.
ADMIN_TOKEN_VARIABLE = "YTUN_ADMIN_TOKEN"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class UsageError(Exception):
    """A bad flag or config value: reported in one line, exit status 2."""


class ConfigError(UsageError):
    """A config file that cannot be used; the message names the file and the key."""


# -- values shared by flags and files ---------------------------------------------------


def check_address(value: str, what: str) -> str:
    """``HOST:PORT`` with both parts (where a client dials)."""
    host, port = split_host_port(value)
    if not host or not port:
        raise UsageError(f"{what} must be HOST:PORT, got {value!r}")
    return value


def check_listen_address(value: str, what: str) -> tuple[str | None, int]:
    """``HOST:PORT`` or ``:PORT`` (every interface, as in Go); the host is None for the
    latter. A bare port is refused: it is unclear whether it should mean every interface
    or loopback only, and the difference decides who can reach the server."""
    if value.isdigit():
        raise UsageError(
            f"{what} needs HOST:PORT, got {value!r}: write :{value} for every interface "
            f"or 127.0.0.1:{value} for this machine only"
        )
    if value.startswith(":") and value[1:].isdigit():
        port = int(value[1:])
        if 0 < port <= 0xFFFF:
            return None, port
    host, port = split_host_port(value)
    if not host or not port:
        raise UsageError(f"{what} must be HOST:PORT or :PORT, got {value!r}")
    return host, port


def check_virtual_host(value: str, what: str) -> str:
    """A Host header value to route: ``name`` or ``name:port``, never a URL."""
    scheme, sep, rest = value.partition("://")
    if sep:
        raise UsageError(
            f"{what} takes a host name, not a URL: write {rest.split('/')[0]!r}, "
            f"without {scheme}://"
        )
    _, slash, path = value.partition("/")
    if slash:
        raise UsageError(
            f"{what} takes a host name, got {value!r}: requests are routed by host only, "
            f"a path ('/{path}') cannot be routed"
        )
    if not value or any(c.isspace() or c in "?#@=" for c in value):
        raise UsageError(f"{what} must be a host name such as app.example.com, got {value!r}")
    if ":" in value and not value.startswith("[") and value.count(":") == 1:
        host, port_text = value.split(":")
        if not host or not port_text.isdigit() or not 0 < int(port_text) <= 0xFFFF:
            raise UsageError(f"{what} must be NAME or NAME:PORT, got {value!r}")
    try:
        normalize_host(value)  # what the registry will require
    except InvalidHostError as exc:
        raise UsageError(f"{what}: {exc}" if what else str(exc)) from None
    return value


def check_domain(value: str, what: str) -> str:
    """The wildcard domain: a host name without port (``tunnel.example.com``)."""
    try:
        return normalize_name(value)
    except InvalidHostError as exc:
        raise UsageError(f"{what}: {exc}" if what else str(exc)) from None


def check_network(value: str, what: str) -> str:
    """An IP network in CIDR notation (``10.0.0.0/8``) or one address."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise UsageError(
            f"{what} must be an IP network such as 10.0.0.0/8 or an address, got {value!r}"
        ) from None
    return value


#: More worker processes than this is a typing mistake, not a machine.
MAX_WORKERS = 1024


def check_servers(value: str, what: str) -> str:
    """One server ``HOST:PORT``, or several, comma separated (the nodes of a cluster)."""
    servers = [address.strip() for address in value.split(",")]
    if not all(servers):
        raise UsageError(f"{what}: an empty address in {value!r}")
    for address in servers:
        check_address(address, what)
    return ",".join(servers)


def check_registry_url(value: str, what: str) -> str:
    """A shared registry: ``redis://[:password@]host[:port][/db]`` (or ``rediss://``)."""
    if not value.startswith(("redis://", "rediss://")) or len(value.split("://", 1)[1]) == 0:
        raise UsageError(f"{what} must be a redis://host:port/db URL")
    return value


def check_workers(value: int | str, what: str) -> int:
    """A number of worker processes, or ``auto``: one per CPU."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str):
        if not value.isdigit():
            raise UsageError(f"{what} must be a number of processes or auto, got {value!r}")
        value = int(value)
    if isinstance(value, bool) or not 1 <= value <= MAX_WORKERS:
        raise UsageError(f"{what} must be from 1 to {MAX_WORKERS}, or auto, got {value!r}")
    return value


def check_admin_url_value(value: str, what: str) -> str:
    """The admin API's URL: ``http://HOST:PORT`` or ``https://…``."""
    try:
        return check_admin_url(value)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}" if what else str(exc)) from None


#: --access-log values that are not file names.
ACCESS_LOG_STREAMS = ("off", "stdout", "stderr")


def check_identifier(value: str, what: str) -> str:
    # Never echo the value: it is a secret.
    if not value:
        raise UsageError(f"{what} must not be empty")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise UsageError(f"{what} must not contain spaces or control characters")
    return value


def read_identifier_file(path: Path, what: str) -> str:
    """The identifier in ``path``: its only line, surrounding whitespace dropped."""
    return read_secret_file(path, what, "identifier")


def read_token_file(path: Path, what: str) -> str:
    """The admin API's bearer token in ``path``: its only line."""
    return read_secret_file(path, what, "token")


def read_secret_file(path: Path, what: str, noun: str) -> str:
    """The one secret (``noun``) in ``path``, on one line; errors never show it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not UTF-8 text") from None
    secret = text.strip()
    if not secret:
        raise UsageError(f"{what} {path} is empty; it should hold the {noun}")
    if any(c.isspace() for c in secret):
        raise UsageError(f"{what} {path} must hold one {noun} on one line")
    return check_identifier(secret, f"{what} {path}")


# -- the file ---------------------------------------------------------------------------


@dataclass
class ServerFile:
    """The ``[server]`` table; None where the file says nothing. Identifier files are
    already read: ``hosts`` and ``tcp`` map to identifiers."""

    path: Path
    listen: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The values are identifiers: secrets stay out of repr() and so out of any log.
    hosts: dict[str, str] = field(default_factory=dict, repr=False)
    tcp: dict[str, str] = field(default_factory=dict, repr=False)
    forwarded_headers: bool | None = None
    trust_forwarded: list[str] | None = None
    #: "off", "stdout", "stderr" or a file (resolved against the config file's directory)
    access_log: str | None = None
    max_connections: int | None = None
    idle_timeout: float | None = None
    stream_timeout: float | None = None
    handshake_timeout: float | None = None
    grace: float | None = None
    log_level: str | None = None
    #: The SQLite state file (resolved against the config file's directory).
    state: Path | None = None
    domain: str | None = None
    workers: int | None = None
    #: A shared registry's URL (``redis://…``), and this node's hop listener.
    registry: str | None = None
    cluster_listen: str | None = None
    cluster_advertise: str | None = None
    cluster_secret_file: Path | None = None
    cluster_tls_ca: Path | None = None
    #: HOST:PORT of the admin API, and the file holding its bearer token.
    admin: str | None = None
    admin_token_file: Path | None = None


@dataclass
class ClientFile:
    """The ``[client]`` table; None where the file says nothing."""

    path: Path
    server: str | None = None
    identifier: str | None = field(default=None, repr=False)
    #: Where ``identifier`` came from; with ``register`` it may not exist yet.
    identifier_file: Path | None = None
    local: str | None = None
    tcp_local: dict[int, str] = field(default_factory=dict)
    tls: bool | None = None
    tls_ca: Path | None = None
    dial_timeout: float | None = None
    exit_on_refused: bool | None = None
    log_level: str | None = None
    #: The admin API to ask for a host (``--register``), its token file, the subdomain.
    register: str | None = None
    token_file: Path | None = None
    subdomain: str | None = None
    inspect: str | None = None
    inspect_allow_remote: bool | None = None
    inspect_max_requests: int | None = None
    inspect_body_limit: int | None = None


class _Table:
    """One table of the file; every error names the file and the key's full dotted name."""

    def __init__(self, path: Path, name: str, values: Mapping[str, Any]) -> None:
        self.path = path
        self.name = name
        self.values = values

    def key(self, key: str) -> str:
        """The dotted name of ``key`` as TOML writes it (``server.hosts."a.test"``)."""
        if not _BARE_KEY.fullmatch(key):
            key = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{self.name}.{key}" if self.name else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.key(key)} {message}")

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.values:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {self.key(close[0])!r}?)" if close else ""
                known = ", ".join(allowed)
                raise ConfigError(
                    f"{self.path}: unknown key {self.key(key)!r}{hint}; "
                    f"{self.name or 'the file'} takes {known}"
                )

    def get(self, key: str, kind: type | tuple[type, ...], kind_name: str) -> Any:
        if key not in self.values:
            return None
        value = self.values[key]
        # TOML booleans are Python ints too: true is not a number of seconds.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(key, f"must be {kind_name}, got {_toml_type(value)}")
        return value

    def string(self, key: str) -> str | None:
        value: str | None = self.get(key, str, "a string")
        if value is not None and not value:
            raise self.error(key, "must not be empty")
        return value

    def path_value(self, key: str) -> Path | None:
        value = self.string(key)
        return None if value is None else self.resolve(value)

    def resolve(self, value: str) -> Path:
        return (self.path.parent / Path(value).expanduser()).resolve()

    def boolean(self, key: str) -> bool | None:
        value: bool | None = self.get(key, bool, "true or false")
        return value

    def seconds(self, key: str, *, zero_allowed: bool = False) -> float | None:
        value = self.get(key, (int, float), "a number of seconds")
        if value is None:
            return None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
            bound = "zero or more" if zero_allowed else "more than zero"
            raise self.error(key, f"must be {bound} seconds, got {value}")
        return float(value)

    def positive_int(self, key: str) -> int | None:
        value: int | None = self.get(key, int, "a whole number")
        if value is not None and value <= 0:
            raise self.error(key, f"must be positive, got {value}")
        return value

    def strings(self, key: str) -> list[str] | None:
        value: list[Any] | None = self.get(key, list, "an array of strings")
        if value is not None:
            for item in value:
                if not isinstance(item, str):
                    raise self.error(key, f"must hold strings, got {_toml_type(item)}")
        return value

    def log_level(self) -> str | None:
        value = self.string("log_level")
        if value is not None and value not in LOG_LEVELS:
            raise self.error("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return value

    def table(self, key: str) -> _Table | None:
        value = self.get(key, dict, "a table")
        return None if value is None else _Table(self.path, self.key(key), value)

    def checked(self, key: str, check: Callable[[str, str], object], value: str) -> None:
        try:
            check(value, "")
        except UsageError as exc:
            raise self.error(key, str(exc).lstrip()) from None

    def identifier_of(self, key: str) -> str:
        """A route's owner: ``"IDENTIFIER"``, ``{ identifier = "…" }`` or
        ``{ identifier_file = "…" }``."""
        value = self.values[key]
        if isinstance(value, str):
            self.checked(key, check_identifier, value)
            return value
        if not isinstance(value, dict):
            raise self.error(
                key,
                "must be an identifier string or a table with identifier or identifier_file, "
                f"got {_toml_type(value)}",
            )
        route = _Table(self.path, self.key(key), value)
        route.check_keys(("identifier", "identifier_file"))
        identifier = route.string("identifier")
        identifier_file = route.path_value("identifier_file")
        if (identifier is None) == (identifier_file is None):
            raise self.error(key, "needs exactly one of identifier and identifier_file")
        if identifier_file is not None:
            return _read_file_key(route, "identifier_file", identifier_file)
        assert identifier is not None
        route.checked("identifier", check_identifier, identifier)
        return identifier


def _read_file_key(table: _Table, key: str, path: Path) -> str:
    try:
        return read_identifier_file(path, "the identifier file")
    except UsageError as exc:
        raise table.error(key, f"names an unusable file: {exc}") from None


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date or time"


def _load(path: Path, section: str) -> _Table:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    top = _Table(path, "", document)
    top.check_keys(("server", "client"))
    table = top.table(section)
    if table is None:
        raise ConfigError(f"{path}: no [{section}] table; ytun {section} reads only that one")
    return table


SERVER_KEYS = (
    "listen",
    "tls_cert",
    "tls_key",
    "hosts",
    "tcp",
    "state",
    "domain",
    "registry",
    "cluster_listen",
    "cluster_advertise",
    "cluster_secret_file",
    "cluster_tls_ca",
    "admin",
    "admin_token_file",
    "forwarded_headers",
    "trust_forwarded",
    "access_log",
    "max_connections",
    "idle_timeout",
    "stream_timeout",
    "handshake_timeout",
    "grace",
    "log_level",
    "workers",
)

CLIENT_KEYS = (
    "server",
    "identifier",
    "identifier_file",
    "local",
    "tcp_local",
    "tls",
    "tls_ca",
    "dial_timeout",
    "exit_on_refused",
    "register",
    "token_file",
    "subdomain",
    "log_level",
    "inspect",
    "inspect_allow_remote",
    "inspect_max_requests",
    "inspect_body_limit",
)


def load_server_file(path: Path) -> ServerFile:
    """Read and check the ``[server]`` table of ``path``, identifier files included."""
    table = _load(path, "server")
    table.check_keys(SERVER_KEYS)
    loaded = ServerFile(path=path)
    loaded.listen = table.string("listen")
    if loaded.listen is not None:
        table.checked("listen", check_listen_address, loaded.listen)
    loaded.tls_cert = table.path_value("tls_cert")
    loaded.tls_key = table.path_value("tls_key")
    hosts = table.table("hosts")
    if hosts is not None:
        for host in hosts.values:
            hosts.checked(host, check_virtual_host, host)
            loaded.hosts[host] = hosts.identifier_of(host)
    tcp = table.table("tcp")
    if tcp is not None:
        for address in tcp.values:
            tcp.checked(address, check_listen_address, address)
            loaded.tcp[address] = tcp.identifier_of(address)
    loaded.state = table.path_value("state")
    loaded.domain = table.string("domain")
    if loaded.domain is not None:
        table.checked("domain", check_domain, loaded.domain)
        loaded.domain = check_domain(loaded.domain, "domain")
    loaded.registry = table.string("registry")
    if loaded.registry is not None:
        table.checked("registry", check_registry_url, loaded.registry)
    for name in ("cluster_listen", "cluster_advertise"):
        value = table.string(name)
        if value is not None:
            table.checked(name, check_listen_address, value)
        setattr(loaded, name, value)
    loaded.cluster_secret_file = table.path_value("cluster_secret_file")
    loaded.cluster_tls_ca = table.path_value("cluster_tls_ca")
    loaded.admin = table.string("admin")
    if loaded.admin is not None:
        table.checked("admin", check_listen_address, loaded.admin)
    loaded.admin_token_file = table.path_value("admin_token_file")
    loaded.forwarded_headers = table.boolean("forwarded_headers")
    loaded.trust_forwarded = table.strings("trust_forwarded")
    for network in loaded.trust_forwarded or ():
        table.checked("trust_forwarded", check_network, network)
    access_log = table.string("access_log")
    if access_log is not None and access_log not in ACCESS_LOG_STREAMS:
        access_log = str(table.resolve(access_log))
    loaded.access_log = access_log
    loaded.max_connections = table.positive_int("max_connections")
    loaded.idle_timeout = table.seconds("idle_timeout", zero_allowed=True)
    loaded.stream_timeout = table.seconds("stream_timeout")
    loaded.handshake_timeout = table.seconds("handshake_timeout")
    loaded.grace = table.seconds("grace", zero_allowed=True)
    loaded.log_level = table.log_level()
    workers = table.get("workers", (int, str), 'a whole number or "auto"')
    if workers is not None:
        table.checked("workers", check_workers, workers)
        loaded.workers = check_workers(workers, "workers")
    return loaded


def load_client_file(path: Path) -> ClientFile:
    """Read and check the ``[client]`` table of ``path``, its identifier file included."""
    table = _load(path, "client")
    table.check_keys(CLIENT_KEYS)
    loaded = ClientFile(path=path)
    loaded.server = table.string("server")
    if loaded.server is not None:
        table.checked("server", check_servers, loaded.server)
        loaded.server = check_servers(loaded.server, "server")
    identifier = table.string("identifier")
    identifier_file = table.path_value("identifier_file")
    if identifier is not None and identifier_file is not None:
        raise table.error("identifier", "and identifier_file exclude each other; keep one")
    loaded.register = table.string("register")
    if loaded.register is not None:
        table.checked("register", check_admin_url_value, loaded.register)
    if identifier is not None:
        table.checked("identifier", check_identifier, identifier)
        loaded.identifier = identifier
    elif identifier_file is not None:
        loaded.identifier_file = identifier_file
        # With register, a missing file is where the identifier it gets will be kept.
        if loaded.register is None or identifier_file.exists():
            loaded.identifier = _read_file_key(table, "identifier_file", identifier_file)
    loaded.local = table.string("local")
    if loaded.local is not None:
        table.checked("local", check_address, loaded.local)
    tcp_local = table.table("tcp_local")
    if tcp_local is not None:
        for port, address in tcp_local.values.items():
            if not port.isdigit() or not 0 < int(port) <= 0xFFFF:
                raise tcp_local.error(port, "is not a port number (the keys are public ports)")
            if not isinstance(address, str):
                raise tcp_local.error(
                    port, f"must be a HOST:PORT string, got {_toml_type(address)}"
                )
            tcp_local.checked(port, check_address, address)
            loaded.tcp_local[int(port)] = address
    loaded.tls = table.boolean("tls")
    loaded.tls_ca = table.path_value("tls_ca")
    loaded.dial_timeout = table.seconds("dial_timeout")
    loaded.exit_on_refused = table.boolean("exit_on_refused")
    loaded.token_file = table.path_value("token_file")
    loaded.subdomain = table.string("subdomain")
    loaded.log_level = table.log_level()
    loaded.inspect = table.string("inspect")
    if loaded.inspect is not None:
        table.checked("inspect", check_listen_address, loaded.inspect)
    loaded.inspect_allow_remote = table.boolean("inspect_allow_remote")
    loaded.inspect_max_requests = table.positive_int("inspect_max_requests")
    body_limit: int | None = table.get("inspect_body_limit", int, "a whole number")
    if body_limit is not None and body_limit < 0:
        raise table.error("inspect_body_limit", f"must be zero or more bytes, got {body_limit}")
    loaded.inspect_body_limit = body_limit
    return loaded
