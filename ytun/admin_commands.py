"""The command line's side of the admin API: ``ytun hosts|tcp|clients`` (one call each,
the answer printed) and the registration of ``ytun client --register``. The calls are
blocking (``http.client``): the commands have no event loop, the client runs them in a
thread before it connects and after it stops."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .control.adminclient import AdminClient
from .errors import AdminError, AdminUnreachableError
from .settings import (
    ADMIN_TOKEN_VARIABLE,
    IDENTIFIER_VARIABLE,
    UsageError,
    check_admin_url_value,
    check_identifier,
    read_token_file,
)

logger = logging.getLogger("ytun")

#: The commands of this module.
ADMIN_COMMANDS = ("hosts", "tcp", "clients")
DEFAULT_ADMIN_URL = "http://127.0.0.1:8001"

HOSTS_EXAMPLES = """\
examples:
  ytun hosts add --subdomain app
  ytun hosts ls --admin https://tunnel.example.com:8001 --token-file ~/.ytun/admin.token
"""

TCP_EXAMPLES = """\
examples:
  ytun tcp add 2222
  ytun tcp rm 2222
"""

CLIENTS_EXAMPLES = """\
examples:
  ytun clients
  ytun clients --json --admin http://127.0.0.1:8001
"""

SECRET_NOTE = (
    "the identifier is a secret and is not shown again: give it to the client with "
    f"--identifier-file FILE or ${IDENTIFIER_VARIABLE}"
)


def add_admin_commands(commands: Any) -> None:
    """``ytun hosts add|rm|ls``, ``ytun tcp add|rm|ls`` and ``ytun clients``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin",
        metavar="URL",
        default=DEFAULT_ADMIN_URL,
        help=f"the server's admin API (default: {DEFAULT_ADMIN_URL})",
    )
    common.add_argument(
        "--token-file",
        metavar="FILE",
        type=Path,
        help=f"the admin API's bearer token (default: ${ADMIN_TOKEN_VARIABLE}, else none)",
    )
    common.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="CA bundle (PEM) to verify an https admin API with (default: the system's)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        help="print the API's JSON answer as it came (default: a table for people)",
    )
    formatter = argparse.RawDescriptionHelpFormatter

    hosts = commands.add_parser(
        "hosts",
        help="add, remove or list virtual hosts through the admin API",
        description="Virtual hosts of a running server, through its admin API (ytun server "
        "--admin). A new host comes with a fresh identifier, shown once.",
        epilog=HOSTS_EXAMPLES,
        formatter_class=formatter,
    )
    actions = hosts.add_subparsers(
        dest="action", metavar="ACTION", required=True, help="add, rm or ls (default: none)"
    )
    add = actions.add_parser(
        "add",
        parents=[common],
        help="register a host: HOST, --subdomain NAME, or a random subdomain",
    )
    add.add_argument(
        "host",
        nargs="?",
        metavar="HOST",
        help="NAME or NAME:PORT (default: --subdomain, else a random subdomain)",
    )
    add.add_argument(
        "--subdomain", metavar="NAME", help="NAME.<the server's --domain> instead of HOST"
    )
    remove = actions.add_parser(
        "rm",
        parents=[common],
        help="delete a host (its client is disconnected if it has no other route)",
    )
    remove.add_argument("host", metavar="HOST")
    actions.add_parser("ls", parents=[common], help="list the hosts")

    tcp = commands.add_parser(
        "tcp",
        help="add, remove or list TCP routes through the admin API",
        description="TCP routes of a running server, through its admin API. A new route "
        "listens at once and comes with a fresh identifier, shown once.",
        epilog=TCP_EXAMPLES,
        formatter_class=formatter,
    )
    actions = tcp.add_subparsers(
        dest="action", metavar="ACTION", required=True, help="add, rm or ls (default: none)"
    )
    add = actions.add_parser(
        "add",
        parents=[common],
        help="tunnel a port: PORT (on the server's --listen host) or HOST:PORT",
    )
    add.add_argument("address", metavar="PORT|HOST:PORT")
    remove = actions.add_parser(
        "rm", parents=[common], help="delete a TCP route: by its port, or a local-IP route by IP"
    )
    remove.add_argument("address", metavar="PORT|HOST:PORT|IP")
    actions.add_parser("ls", parents=[common], help="list the TCP routes")

    commands.add_parser(
        "clients",
        parents=[common],
        help="list the connected clients through the admin API",
        description="The connected clients of a running server: label (one of its hosts), "
        "address, connected since, open streams, bytes in and out.",
        epilog=CLIENTS_EXAMPLES,
        formatter_class=formatter,
    )


def admin_command(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """``ytun hosts|tcp|clients``: one call to the admin API, its answer printed."""
    check_admin_url_value(args.admin, "--admin")
    token = admin_token(args.token_file, "--token-file", environ, None, "")
    context = None
    if args.tls_ca is not None:
        try:
            context = ssl.create_default_context(cafile=args.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise UsageError(f"cannot use the TLS CA bundle {args.tls_ca}: {reason}") from None
    admin = AdminClient(args.admin, token, ssl_context=context)
    action = (args.command, getattr(args, "action", "ls"))
    if action == ("hosts", "add"):
        if args.host is not None and args.subdomain is not None:
            raise UsageError("give HOST or --subdomain NAME, not both")
        _show_new(admin.add_host(args.host, args.subdomain), ("host", "url"), args.json)
    elif action == ("hosts", "rm"):
        admin.delete_host(args.host)
        _print(f"deleted host {args.host}")
    elif action == ("hosts", "ls"):
        columns = [("HOST", "host"), ("CLIENT", "client"), ("CONNECTED", "connected")]
        _show_list(admin.hosts(), [*columns, ("URL", "url")], "hosts", args.json)
    elif action == ("tcp", "add"):
        address: str = args.address
        if address.isdigit():
            answer = admin.add_tcp(port=int(address))
        else:
            answer = admin.add_tcp(addr=address)
        _show_new(answer, ("addr", "port"), args.json)
    elif action == ("tcp", "rm"):
        admin.delete_tcp(args.address)
        _print(f"deleted TCP route {args.address}")
    elif action == ("tcp", "ls"):
        columns = [("ROUTE", "route"), ("CLIENT", "client"), ("CONNECTED", "connected")]
        _show_list(admin.tcp(), columns, "tcp", args.json)
    else:
        columns = [
            ("LABEL", "label"),
            ("PEER", "peer"),
            ("SINCE", "connected_since"),
            ("STREAMS", "streams"),
            ("BYTES IN", "bytes_in"),
            ("BYTES OUT", "bytes_out"),
        ]
        _show_list(admin.clients(), columns, "clients", args.json)
    return 0


def _show_new(answer: dict[str, Any], names: tuple[str, ...], as_json: bool) -> None:
    if as_json:
        _print(json.dumps(answer))
    else:
        for name in (*names, "identifier"):
            _print(f"{name + ':':<12}{answer.get(name)}")
    print(f"note: {SECRET_NOTE}", file=sys.stderr)


def _show_list(
    rows: list[dict[str, Any]], columns: list[tuple[str, str]], what: str, as_json: bool
) -> None:
    if as_json:
        _print(json.dumps({what: rows}))
        return
    if not rows:
        _print(f"no {what}")
        return
    cells = [[title for title, _ in columns]]
    cells += [[_cell(row.get(name)) for _, name in columns] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    for line in cells:
        padded = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        _print("  ".join(padded).rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


def admin_failure(exc: AdminError) -> str:
    if isinstance(exc, AdminUnreachableError):
        return f"{exc} (is the server running with --admin?)"
    if exc.status == 401:
        return f"{exc} (give --token-file FILE or ${ADMIN_TOKEN_VARIABLE})"
    return str(exc)


def admin_token(
    flag_file: Path | None,
    flag: str,
    environ: dict[str, str],
    config_file: Path | None,
    key: str,
) -> str | None:
    """The admin token: the flag's file, then the environment, then the config file's."""
    if flag_file is not None:
        return read_token_file(flag_file, flag)
    if ADMIN_TOKEN_VARIABLE in environ:
        return check_identifier(environ[ADMIN_TOKEN_VARIABLE], f"${ADMIN_TOKEN_VARIABLE}")
    if config_file is not None:
        return read_token_file(config_file, key)
    return None


# -- ytun client --register --------------------------------------------------------


@dataclass
class Registration:
    """Where ``ytun client --register`` asks for its host, and where it keeps the answer."""

    url: str
    token: str | None = field(repr=False)
    subdomain: str | None
    #: Holds the identifier across runs; None: the host lives as long as this run.
    identifier_file: Path | None
    #: The identifier file existed: its identifier is used, nothing is registered.
    reused: bool = False
    ssl: ssl.SSLContext | None = None


def register(registration: Registration) -> dict[str, Any]:
    """Ask the admin API for a host (blocking); ``{"host", "identifier", "url"}``. With an
    identifier file, the identifier is written there (mode 0600) before it is used; a
    file that cannot be written deletes the host again and ends the client."""
    admin = AdminClient(registration.url, registration.token, ssl_context=registration.ssl)
    answer = admin.add_host(subdomain=registration.subdomain)
    path = registration.identifier_file
    if path is not None:
        try:
            # O_EXCL: never overwrite an identifier another run wrote meanwhile.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(answer["identifier"] + "\n")
        except OSError as exc:
            with contextlib.suppress(AdminError):
                admin.delete_host(answer["host"])
            raise UsageError(
                f"cannot keep the identifier in {path}: {exc.strerror or exc}; the host "
                f"{answer['host']} was deleted again"
            ) from None
    return answer


def unregister(registration: Registration, host: str) -> None:
    """Delete the host a run without an identifier file registered (blocking); a failure
    is logged, the client stops all the same."""
    admin = AdminClient(registration.url, registration.token, ssl_context=registration.ssl)
    try:
        admin.delete_host(host)
    except AdminError as exc:
        logger.warning("could not delete the host %s registered for this run: %s", host, exc)
    else:
        logger.info("deleted the host %s registered for this run", host)


def _print(line: str) -> None:
    print(line, flush=True)
