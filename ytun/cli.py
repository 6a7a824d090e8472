"""``ytun server | client | demo``: the command line, with the flags of the Go tools' wrappers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .demo import start_demo_app
from .tunnel import Client, Server
from .tunnel.addr import split_host_port
from .tunnel.limits import raise_fd_limit

logger = logging.getLogger("ytun")


class UsageError(Exception):
    """A bad flag value: reported in one line, exit status 2."""


def _mapping(value: str, what: str) -> tuple[str, str]:
    left, sep, right = value.rpartition("=")
    if not sep or not left or not right:
        raise UsageError(f"{what} must look like LEFT=RIGHT, got {value!r}")
    return left, right


def _address(value: str, what: str) -> tuple[str, int]:
    host, port = split_host_port(value)
    if not host or not port:
        raise UsageError(f"{what} must be HOST:PORT, got {value!r}")
    return host, port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ytun", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    server = commands.add_parser("server", help="run the public tunnel server")
    server.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT to listen on")
    server.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST=IDENTIFIER",
        help="route this virtual host to the client with IDENTIFIER",
    )
    server.add_argument(
        "--tcp",
        action="append",
        default=[],
        metavar="ADDR=IDENTIFIER",
        help="listen on ADDR (HOST:PORT) and tunnel its TCP connections",
    )
    server.add_argument("--tls-cert", help="certificate chain (PEM) for TLS on --listen")
    server.add_argument("--tls-key", help="private key (PEM) for --tls-cert")
    server.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="connections held at once; more are answered 503 "
        "(default: the descriptor limit, raised to its maximum at start, less 64)",
    )
    server.add_argument(
        "--no-forwarded-headers",
        action="store_true",
        help="do not add X-Forwarded-For/-Proto/-Host",
    )

    client = commands.add_parser("client", help="run a tunnel client next to your service")
    client.add_argument("--server", required=True, help="HOST:PORT of the tunnel server")
    client.add_argument("--identifier", required=True, help="the secret this client uses")
    client.add_argument(
        "--local",
        help="HOST:PORT of the local HTTP service "
        "(default 127.0.0.1 and the port of the public Host)",
    )
    client.add_argument(
        "--tcp-local",
        action="append",
        default=[],
        metavar="PORT=ADDR",
        help="send TCP tunnels of public PORT to local ADDR",
    )
    client.add_argument("--tls", action="store_true", help="connect to the server over TLS")
    client.add_argument("--tls-ca", help="CA bundle (PEM) to verify the server with")

    demo = commands.add_parser("demo", help="server, client and a sample app in one process")
    demo.add_argument("--port", type=int, default=8000, help="public port (default 8000)")

    for sub in (server, client, demo):
        sub.add_argument(
            "--log-level", default="info", choices=["debug", "info", "warning", "error"]
        )
    return parser


async def run_server(args: argparse.Namespace, ready: Callable[[str], None]) -> Server:
    before, after = raise_fd_limit()
    if after != before:
        logger.debug("descriptor limit raised from %d to %d", before, after)
    if args.max_connections is not None and args.max_connections <= 0:
        raise UsageError("--max-connections must be positive")
    server = Server(
        forwarded_headers=not args.no_forwarded_headers, max_connections=args.max_connections
    )
    for value in args.host:
        host, identifier = _mapping(value, "--host")
        server.add_host(host, identifier)
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise UsageError("--tls-cert and --tls-key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    host, port = _address(args.listen, "--listen")
    await server.serve(host, port, ssl=context)
    for value in args.tcp:
        address, identifier = _mapping(value, "--tcp")
        _address(address, "--tcp")
        bound = await server.add_addr(address, identifier)
        logger.info("tunnelling TCP on %s:%d", *bound)
    ready(f"ytun server listening on {'https' if context else 'http'}://{host}:{port}")
    return server


def make_client(args: argparse.Namespace) -> Client:
    _address(args.server, "--server")
    if args.local:
        _address(args.local, "--local")
    tcp_local = {}
    for value in args.tcp_local:
        port, address = _mapping(value, "--tcp-local")
        if not port.isdigit():
            raise UsageError(f"--tcp-local port must be a number, got {port!r}")
        _address(address, "--tcp-local")
        tcp_local[int(port)] = address
    context = None
    if args.tls or args.tls_ca:
        context = ssl.create_default_context(cafile=args.tls_ca)
    return Client(
        args.server, args.identifier, local_addr=args.local, tcp_local=tcp_local, ssl=context
    )


async def _until_signal(work: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await work(stop)


def _print(line: str) -> None:
    print(line, flush=True)


async def main_async(args: argparse.Namespace) -> None:
    async def server_main(stop: asyncio.Event) -> None:
        server = await run_server(args, _print)
        await stop.wait()
        await server.close(grace=5)

    async def client_main(stop: asyncio.Event) -> None:
        client = make_client(args)
        task = asyncio.ensure_future(client.start())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        await client.close(grace=5)
        stopped.cancel()
        await task

    async def demo_main(stop: asyncio.Event) -> None:
        app = await start_demo_app()
        app_port = app.sockets[0].getsockname()[1]
        identifier = secrets.token_urlsafe(16)
        server = Server()
        server.add_host(f"demo.localhost:{args.port}", identifier)
        server.add_host("demo.localhost", identifier)
        await server.serve("127.0.0.1", args.port)
        client = Client(f"127.0.0.1:{args.port}", identifier, local_addr=f"127.0.0.1:{app_port}")
        task = asyncio.ensure_future(client.start())
        await client.wait_connected(timeout=10)
        _print(f"ytun demo: open http://demo.localhost:{args.port}/  (Ctrl-C to stop)")
        await stop.wait()
        await client.close(grace=2)
        await task
        await server.close(grace=2)
        app.close()

    work = {"server": server_main, "client": client_main, "demo": demo_main}[args.command]
    await _until_signal(work)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed, else on the stock asyncio loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        _run(main_async(args))
    except UsageError as exc:
        print(f"ytun {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ytun {args.command}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
