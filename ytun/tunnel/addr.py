"""Host and port text as it appears in Host headers and on the command line."""

from __future__ import annotations

import ipaddress


def split_host_port(host: str) -> tuple[str, int]:
    """``("example.com", 8000)`` from ``example.com:8000``; port 0 when absent or invalid."""
    if host.startswith("["):  # [v6]:port
        bracket = host.find("]")
        name, rest = host[1:bracket], host[bracket + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, port_text = host.split(":")
    else:
        name, port_text = host, ""
    # ASCII digits only: str.isdigit() also takes "²" or "٨", which int() rejects or reads.
    valid = 0 < len(port_text) <= 5 and port_text.isascii() and port_text.isdigit()
    port = int(port_text) if valid and int(port_text) <= 0xFFFF else 0
    return name, port


def parse_addr(address: str, default_port: int = 80) -> tuple[str, int]:
    """``(host, port)`` from ``host[:port]``, with ``default_port`` when none is given."""
    host, port = split_host_port(address)
    return host, port or default_port


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
