"""The build is what it claims: the compiled codec and HTTP scanning are loaded unless
asked otherwise, and both implementations and the stubs expose the same API."""

from __future__ import annotations

import ast
import importlib
import os
import pathlib

import pytest

import ytun
from ytun import _frames_py, _http_py
from ytun.tunnel import scan
from ytun.yamux import codec as frames

STUB = pathlib.Path(ytun.__file__).with_name("_frames.pyi")
HTTP_STUB = pathlib.Path(ytun.__file__).with_name("_http.pyi")


def test_compiled_module_is_loaded_unless_disabled():
    if os.environ.get("YTUN_NO_EXTENSIONS"):
        assert frames.implementation is _frames_py
        return
    assert not frames.COMPILED_MISSING, "ytun was built without its compiled codec"
    compiled = importlib.import_module("ytun._frames")
    assert frames.implementation is compiled
    assert pathlib.Path(compiled.__file__).suffix in (".so", ".pyd")
    assert frames.FrameParser is compiled.FrameParser


def test_compiled_http_scanning_is_loaded_unless_disabled():
    if os.environ.get("YTUN_NO_EXTENSIONS"):
        assert scan.implementation is _http_py
        return
    assert not scan.COMPILED_MISSING, "ytun was built without its compiled HTTP scanning"
    compiled = importlib.import_module("ytun._http")
    assert scan.implementation is compiled
    assert pathlib.Path(compiled.__file__).suffix in (".so", ".pyd")
    assert scan.response_framing is compiled.response_framing


def _public(module) -> set[str]:
    return set(module.__all__)


def test_twins_expose_the_same_names():
    if frames.NO_EXTENSIONS:
        pytest.skip("the compiled module is disabled in this run")
    compiled = importlib.import_module("ytun._frames")
    assert _public(compiled) == _public(_frames_py)
    for name in ("FrameParser", "FlowWindow"):
        methods_c = {m for m in dir(getattr(compiled, name)) if not m.startswith("_")}
        methods_py = {m for m in dir(getattr(_frames_py, name)) if not m.startswith("_")}
        assert methods_c == methods_py, name
    assert _public(importlib.import_module("ytun._http")) == _public(_http_py)


@pytest.mark.parametrize(("stub", "twin"), [(STUB, _frames_py), (HTTP_STUB, _http_py)])
def test_stub_declares_every_public_name(stub, twin):
    tree = ast.parse(stub.read_text())
    declared = {
        node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }
    declared |= {
        node.target.id
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    assert _public(twin) <= declared
