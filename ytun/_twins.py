"""A compiled module and its pure-Python twin: which one runs, and both for the tests.

``YTUN_NO_EXTENSIONS=1`` (or a non-CPython interpreter) selects the twin, and so does a
package built without the extension (no C compiler at install time): then ``missing`` is
true, and the test suite's guard fails, so that a build that lost its extension is noticed
rather than quietly running slower.
"""

from __future__ import annotations

import importlib
import os
import platform
from types import ModuleType

NO_EXTENSIONS = bool(os.environ.get("YTUN_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)


class Twins:
    """``compiled`` (a full module name) if it can run here, else ``twin``."""

    def __init__(self, compiled: str, twin: ModuleType) -> None:
        self.twin = twin
        self.implementation = twin
        self.missing = False
        if not NO_EXTENSIONS:
            try:
                # By full name: ``from .. import _frames`` would blame a "circular import"
                # when the module is simply not there.
                self.implementation = importlib.import_module(compiled)
            except ModuleNotFoundError as exc:
                if exc.name != compiled:
                    raise
                self.missing = True

    def available(self) -> list[ModuleType]:
        """Every implementation usable here, compiled first (for tests and benchmarks)."""
        if self.implementation is self.twin:
            return [self.twin]
        return [self.implementation, self.twin]

    def name(self, module: ModuleType) -> str:
        """``"py"`` for the pure-Python twin, ``"c"`` for the compiled module (test ids)."""
        return "py" if module is self.twin else "c"
