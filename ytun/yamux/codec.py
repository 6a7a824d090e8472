"""The yamux frame codec and flow-control windows: the compiled module, or its twin.

``YTUN_NO_EXTENSIONS=1`` (or a non-CPython interpreter) selects the pure-Python twin, and
so does a package built without the extension (no C compiler at install time): then
``COMPILED_MISSING`` is true, and the test suite's guard fails, so that a build that lost
its extension is noticed rather than quietly running slower.
"""

from __future__ import annotations

import importlib
import os
import platform
from types import ModuleType

from .. import _frames_py

NO_EXTENSIONS = bool(os.environ.get("YTUN_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)

COMPILED_MISSING = False
implementation: ModuleType = _frames_py
if not NO_EXTENSIONS:
    try:
        # By full name: ``from .. import _frames`` would blame a "circular import" when the
        # module is simply not there.
        implementation = importlib.import_module("ytun._frames")
    except ModuleNotFoundError as exc:
        if exc.name != "ytun._frames":
            raise
        COMPILED_MISSING = True

DEFAULT_MAX_PAYLOAD = implementation.DEFAULT_MAX_PAYLOAD
FlowWindow = implementation.FlowWindow
FrameParser = implementation.FrameParser
decode_header = implementation.decode_header
encode_frame = implementation.encode_frame
encode_header = implementation.encode_header


def available() -> list[ModuleType]:
    """Every implementation usable here, compiled first (for tests and benchmarks)."""
    if implementation is _frames_py:
        return [_frames_py]
    return [implementation, _frames_py]


def implementation_name(module: ModuleType) -> str:
    """``"py"`` for the pure-Python twin, ``"c"`` for the compiled module (test ids)."""
    return "py" if module is _frames_py else "c"


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
