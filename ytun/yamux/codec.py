"""The yamux frame codec and flow-control windows: the compiled module, or its twin.

``YTUN_NO_EXTENSIONS=1`` (or a non-CPython interpreter) selects the pure-Python twin.
Otherwise the compiled module must be importable: a broken build fails loudly here
instead of quietly running ten times slower.
"""

from __future__ import annotations

import os
import platform
from types import ModuleType

from .. import _frames_py

NO_EXTENSIONS = bool(os.environ.get("YTUN_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)

if NO_EXTENSIONS:
    implementation = _frames_py
else:
    from .. import _frames as implementation  # type: ignore[no-redef]

DEFAULT_MAX_PAYLOAD = implementation.DEFAULT_MAX_PAYLOAD
FlowWindow = implementation.FlowWindow
FrameParser = implementation.FrameParser
decode_header = implementation.decode_header
encode_frame = implementation.encode_frame
encode_header = implementation.encode_header


def available() -> list[ModuleType]:
    """Every implementation usable here, compiled first (for tests and benchmarks)."""
    if NO_EXTENSIONS:
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
    "FlowWindow",
    "FrameParser",
    "decode_header",
    "encode_frame",
    "encode_header",
    "implementation",
]
