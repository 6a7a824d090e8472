"""How the workers share the public port.

``reuse_port`` (where SO_REUSEPORT exists): each worker listens on the port with its own
socket and the kernel spreads new connections over them, while the parent holds the port
bound (never listening, so it is never given a connection) for as long as it runs.

``inherit`` (without SO_REUSEPORT, or when ``$YTUN_SHARE_LISTENER`` is ``inherit``, e.g.
where SO_REUSEPORT does not spread connections): the parent listens and every worker
accepts on that one socket, inherited; the parent itself never accepts.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from typing import Literal

Sharing = Literal["reuse_port", "inherit"]

#: Set to ``inherit`` to share one inherited listener even where SO_REUSEPORT exists.
SHARING_VARIABLE = "YTUN_SHARE_LISTENER"


def reuse_port_available() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def sharing(environ: Mapping[str, str] = os.environ) -> Sharing:
    if environ.get(SHARING_VARIABLE) == "inherit" or not reuse_port_available():
        return "inherit"
    return "reuse_port"


def listen_shared(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets on ``host:port`` for the workers to inherit (``inherit``)."""
    sockets = reserve_port(host, port, reuse_port=False)
    for sock in sockets:
        sock.listen(backlog)
        sock.set_inheritable(True)
    return sockets


def reserve_port(host: str, port: int, *, reuse_port: bool = True) -> list[socket.socket]:
    """Bind ``host:port`` ("" for every interface), with SO_REUSEPORT unless told not to,
    and do not listen. A port 0 becomes one free port for every address. Raises OSError if
    it is taken."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    reserved: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            reserved.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
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
