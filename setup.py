"""Builds the one compiled module, ``ytun._frames``; all metadata lives in pyproject.toml.

``YTUN_NO_EXTENSIONS=1`` builds a pure-Python package that uses ``ytun/_frames_py.py``.
``YTUN_CYTHON_ANNOTATE=1`` writes Cython's HTML annotation next to the source.
"""

import os
import platform

from setuptools import Extension, setup

NO_EXTENSIONS = bool(os.environ.get("YTUN_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)

if NO_EXTENSIONS:
    print("*** ytun: building the pure-Python package (no extension) ***")
    ext_modules = []
else:
    from Cython.Build import cythonize

    print("*** ytun: building the compiled frame codec ***")
    ext_modules = cythonize(
        [Extension("ytun._frames", ["ytun/_frames.pyx"], extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3"},
        annotate=bool(os.environ.get("YTUN_CYTHON_ANNOTATE")),
    )

setup(ext_modules=ext_modules)
