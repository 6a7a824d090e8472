"""The per-message HTTP/1 scanning of the data path: the compiled module, or its twin.

Selected like the frame codec (:mod:`ytun.yamux.codec`): ``YTUN_NO_EXTENSIONS=1`` (or a
non-CPython interpreter) selects the pure-Python twin, and so does a package built without
the extension, which then sets ``COMPILED_MISSING``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .. import _http_py
from ..yamux.codec import NO_EXTENSIONS

COMPILED_MISSING = False
implementation: ModuleType = _http_py
if not NO_EXTENSIONS:
    try:
        implementation = importlib.import_module("ytun._http")
    except ModuleNotFoundError as exc:
        if exc.name != "ytun._http":
            raise
        COMPILED_MISSING = True

plain_head_end = implementation.plain_head_end
request_fields = implementation.request_fields
response_framing = implementation.response_framing


def available() -> list[ModuleType]:
    """Every implementation usable here, compiled first (for tests and benchmarks)."""
    if implementation is _http_py:
        return [_http_py]
    return [implementation, _http_py]


def implementation_name(module: ModuleType) -> str:
    """``"py"`` for the pure-Python twin, ``"c"`` for the compiled module (test ids)."""
    return "py" if module is _http_py else "c"


__all__ = [
    "COMPILED_MISSING",
    "available",
    "implementation",
    "implementation_name",
    "plain_head_end",
    "request_fields",
    "response_framing",
]
