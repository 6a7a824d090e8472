"""Host names a registry accepts: RFC 1123 names, optionally with a port, lower-cased.

Hosts come from flags, config files and (through the admin API) from the network, so the
check is strict: a name that is not plainly ``name`` or ``name:port`` is refused with a
reason rather than stored and never matched."""

from __future__ import annotations

import secrets
import string

from ..errors import InvalidHostError

MAX_NAME = 253
MAX_LABEL = 63
#: Random subdomains: lower-case letters and digits only, easy to read out and type.
SUBDOMAIN_ALPHABET = string.ascii_lowercase + string.digits
SUBDOMAIN_LENGTH = 8

_LABEL_CHARS = frozenset(string.ascii_lowercase + string.digits + "-")


def split_port(host: str) -> tuple[str, int]:
    """``("example.com", 8000)`` from ``example.com:8000``; port 0 when absent or invalid.
    Used on the lookup path, on any Host header: never raises."""
    name, sep, port_text = host.rpartition(":")
    if not sep or ":" in name:
        return host, 0
    # ASCII digits only: str.isdigit() also takes "²" or "٨", which int() rejects or reads.
    if 0 < len(port_text) <= 5 and port_text.isascii() and port_text.isdigit():
        port = int(port_text)
        if port <= 0xFFFF:
            return name, port
    return name, 0


def _check_label(label: str, name: str) -> None:
    if not label:
        raise InvalidHostError(f"host {name!r} has an empty label (two dots, or a dot at an end)")
    if len(label) > MAX_LABEL:
        raise InvalidHostError(f"host {name!r} has a label longer than {MAX_LABEL} characters")
    if not _LABEL_CHARS.issuperset(label):
        bad = next(c for c in label if c not in _LABEL_CHARS)
        raise InvalidHostError(
            f"host {name!r} has {bad!r} in a label: only letters, digits and '-' are allowed"
        )
    if label[0] == "-" or label[-1] == "-":
        raise InvalidHostError(f"host {name!r} has a label that starts or ends with '-'")


def normalize_name(text: str) -> str:
    """A host name without port: RFC 1123 labels, lower-cased."""
    if not isinstance(text, str) or not text:
        raise InvalidHostError("host name is empty")
    name = text.lower()
    if not name.isascii():
        raise InvalidHostError(
            f"host {text!r} is not ASCII: give internationalized names in their xn-- form"
        )
    if len(name) > MAX_NAME:
        raise InvalidHostError(f"host name is longer than {MAX_NAME} characters")
    for label in name.split("."):
        _check_label(label, text)
    return name


def normalize_host(text: str) -> str:
    """``name`` or ``name:port`` as the registry stores it: RFC 1123 labels (1 to 63
    letters, digits or hyphens, no hyphen at either end, 253 characters at most), port
    1 to 65535, lower-cased. Raises :class:`InvalidHostError` with the reason."""
    if not isinstance(text, str) or not text:
        raise InvalidHostError("host is empty")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise InvalidHostError(f"host {text!r} contains whitespace or control characters")
    if "://" in text:
        raise InvalidHostError(f"host {text!r} is a URL: give the host name only, no scheme")
    for char, what in (("/", "a path"), ("?", "a query"), ("#", "a fragment"), ("@", "userinfo")):
        if char in text:
            raise InvalidHostError(
                f"host {text!r} contains {what} ({char!r}): requests are routed by host only"
            )
    if text.startswith("["):
        raise InvalidHostError(f"host {text!r} is an IPv6 literal: give a host name")
    name, sep, port_text = text.partition(":")
    if sep:
        if ":" in port_text:
            raise InvalidHostError(f"host {text!r} has more than one ':'")
        valid = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
        if not valid or not 0 < int(port_text) <= 0xFFFF:
            raise InvalidHostError(f"host {text!r} has a port that is not 1 to 65535")
        return f"{normalize_name(name)}:{int(port_text)}"
    return normalize_name(name)


def normalize_subdomain(label: str) -> str:
    """One label to put in front of the server's domain (``foo`` of ``foo.example.com``)."""
    if not isinstance(label, str) or not label:
        raise InvalidHostError("subdomain is empty")
    lowered = label.lower()
    if "." in lowered:
        raise InvalidHostError(f"subdomain {label!r} must be a single label, without dots")
    if not lowered.isascii():
        raise InvalidHostError(f"subdomain {label!r} is not ASCII")
    _check_label(lowered, label)
    return lowered


def random_subdomain() -> str:
    """A fresh readable label, 8 characters of ``[a-z0-9]`` (41 bits) from ``secrets``.
    It starts with a letter, so it never looks like a number."""
    first = secrets.choice(string.ascii_lowercase)
    rest = "".join(secrets.choice(SUBDOMAIN_ALPHABET) for _ in range(SUBDOMAIN_LENGTH - 1))
    return first + rest
