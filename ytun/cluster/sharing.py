"""How the workers share the public port: each listens on it with SO_REUSEPORT and the
kernel spreads new connections over them, while the parent holds the port bound (never
listening, so it is never given a connection) for as long as it runs."""

from __future__ import annotations

import contextlib
import socket


def reuse_port_available() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """Bind ``host:port`` ("" for every interface) with SO_REUSEPORT and do not listen.
    A port 0 becomes one free port for every address. Raises OSError if it is taken."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    reserved: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            reserved.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio's listeners are
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and reserved[0] is not sock:
                address = (address[0], reserved[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot listen on {host or '*'}:{port}: {exc.strerror or exc}"
                ) from None
    except BaseException:
        for sock in reserved:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return reserved
