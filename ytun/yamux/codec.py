"""The yamux frame codec and flow-control windows: the compiled module, or its twin.

``YTUN_NO_EXTENSIONS=1`` (or a non-CPython interpreter) selects the pure-Python twin, and
so does a package built without the extension (no C compiler at install time): then
``COMPILED_MISSING`` is true, and the test suite's guard fails, so that a build that lost
its extension is noticed rather than quietly running slower.
"""

from __future__ import annotations

from types import ModuleType

from .. import _frames_py
from .._twins import NO_EXTENSIONS, Twins

_twins = Twins("ytun._frames", _frames_py)
implementation: ModuleType = _twins.implementation
COMPILED_MISSING = _twins.missing
available = _twins.available
implementation_name = _twins.name

DEFAULT_MAX_PAYLOAD = implementation.DEFAULT_MAX_PAYLOAD
FlowWindow = implementation.FlowWindow
FrameParser = implementation.FrameParser
decode_header = implementation.decode_header
encode_frame = implementation.encode_frame
encode_header = implementation.encode_header


__all__ = [
    "available",
    "implementation_name",
    "DEFAULT_MAX_PAYLOAD",
    "NO_EXTENSIONS",
    "COMPILED_MISSING",
    "FlowWindow",
    "FrameParser",
    "decode_header",
    "encode_frame",
    "encode_header",
    "implementation",
]
