"""Installing without a C compiler: the build falls back to the pure-Python codec with a
notice, and a package without the compiled module runs (on the twin) without being told,
never failing with a misleading "circular import" error."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

import ytun

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE_TREE = (ROOT / "setup.py").exists() and (ROOT / "ytun" / "_frames.pyx").exists()

# Imports ytun as if the compiled module had never been built.
WITHOUT_COMPILED = """
import importlib.abc, sys
class NoCompiled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in ("ytun._frames", "ytun._http"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoCompiled())
import ytun
from ytun.yamux import codec
from ytun import _frames_py, _http_py
from ytun.tunnel import scan
assert codec.implementation is _frames_py and codec.COMPILED_MISSING
assert scan.implementation is _http_py and scan.COMPILED_MISSING
assert scan.response_framing(b"HTTP/1.1 204 No Content\\r\\n\\r\\n")[0] == 204
assert codec.decode_header(codec.encode_header(0, 2, 5, 7)) == (0, 0, 2, 5, 7)
print("twin in use")
"""


def test_a_package_without_the_compiled_module_runs_on_the_twin() -> None:
    env = {k: v for k, v in os.environ.items() if k != "YTUN_NO_EXTENSIONS"}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_COMPILED],
        cwd=pathlib.Path(ytun.__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "twin in use" in result.stdout
    assert "circular import" not in result.stderr


@pytest.mark.skipif(not SOURCE_TREE, reason="needs the source tree (setup.py), not a wheel")
def test_a_build_without_a_working_compiler_installs_the_pure_codec(tmp_path) -> None:
    pytest.importorskip("Cython", reason="building needs Cython (the test extra has it)")
    tree = tmp_path / "src"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "results", "*.so", "*.c", "__pycache__", "*.egg-info"
        ),
    )
    broken = tmp_path / "bin"
    broken.mkdir()
    for name in ("cc", "gcc", "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc", "clang"):
        (broken / name).write_text("#!/bin/sh\necho 'no compiler here' >&2\nexit 1\n")
        (broken / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "YTUN_NO_EXTENSIONS"}
    env.update(PATH=f"{broken}{os.pathsep}{env.get('PATH', '')}", CC=str(broken / "cc"))
    result = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "installing the pure-Python codec" in result.stdout + result.stderr
    assert not list((tree / "ytun").glob("_frames*.so"))
    assert not list((tree / "ytun").glob("_http*.so"))


@pytest.mark.skipif(not SOURCE_TREE, reason="needs the source tree (pyproject.toml)")
def test_every_subpackage_is_listed_for_the_wheel() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "ytun").rglob("__init__.py")
    }
    assert listed == found


@pytest.mark.skipif(not SOURCE_TREE, reason="needs the source tree (setup.py), not a wheel")
def test_the_wheel_holds_every_package_and_the_inspector_page(tmp_path) -> None:
    """Every subpackage, and the inspector's page files (package data), are in the wheel
    and in the source distribution the wheel is built from."""
    pytest.importorskip("Cython", reason="building needs Cython (the test extra has it)")
    env = dict(os.environ, YTUN_NO_EXTENSIONS="1")  # the codec is not what this checks
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("ytun-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    packages = {
        path.parent.relative_to(ROOT).as_posix() for path in (ROOT / "ytun").rglob("__init__.py")
    }
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    for name in ("index.html", "inspector.js", "inspector.css"):
        assert f"ytun/inspector/static/{name}" in names
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "recursive-include ytun/inspector/static" in manifest
