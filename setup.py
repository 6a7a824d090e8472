"""Builds the compiled modules, ``ytun._frames`` (the frame codec) and ``ytun._http`` (the
data path's HTTP scanning); all metadata lives in pyproject.toml.

``YTUN_NO_EXTENSIONS=1`` builds a pure-Python package that uses their twins,
``ytun/_frames_py.py`` and ``ytun/_http_py.py``.
Without a working C compiler the build falls back to the same pure-Python package, with a
notice, instead of failing (as aiohttp and msgpack do). ``YTUN_CYTHON_ANNOTATE=1`` writes
Cython's HTML annotation next to the source.
"""

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = bool(os.environ.get("YTUN_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)

NOTICE = (
    "*** ytun: a compiled module could not be built ({reason}); installing the "
    "pure-Python codec and HTTP scanning, which work the same, only slower. ***"
)


def _reason(exc):
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:80]}" if text else type(exc).__name__


class OptionalBuildExt(build_ext):
    """Builds the extension when a compiler is there; otherwise leaves it out."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python headers, ...
            print(NOTICE.format(reason=_reason(exc)), file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(NOTICE.format(reason=_reason(exc)), file=sys.stderr)


if NO_EXTENSIONS:
    print("*** ytun: building the pure-Python package (no extension) ***")
    ext_modules = []
else:
    from Cython.Build import cythonize

    print("*** ytun: building the compiled frame codec and HTTP scanning ***")
    ext_modules = cythonize(
        [
            Extension("ytun._frames", ["ytun/_frames.pyx"], extra_compile_args=["-O2"]),
            Extension("ytun._http", ["ytun/_http.pyx"], extra_compile_args=["-O2"]),
        ],
        compiler_directives={"language_level": "3"},
        annotate=bool(os.environ.get("YTUN_CYTHON_ANNOTATE")),
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
