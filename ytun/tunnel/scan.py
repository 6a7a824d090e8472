"""The per-message HTTP/1 scanning of the data path: the compiled module, or its twin.

Selected like the frame codec (:mod:`ytun.yamux.codec`): ``YTUN_NO_EXTENSIONS=1`` (or a
non-CPython interpreter) selects the pure-Python twin, and so does a package built without
the extension, which then sets ``COMPILED_MISSING``.
"""

from __future__ import annotations

from types import ModuleType

from .. import _http_py
from .._twins import Twins

_twins = Twins("ytun._http", _http_py)
implementation: ModuleType = _twins.implementation
COMPILED_MISSING = _twins.missing
available = _twins.available
implementation_name = _twins.name

plain_head_end = implementation.plain_head_end
request_fields = implementation.request_fields
response_framing = implementation.response_framing


__all__ = [
    "COMPILED_MISSING",
    "available",
    "implementation",
    "implementation_name",
    "plain_head_end",
    "request_fields",
    "response_framing",
]
