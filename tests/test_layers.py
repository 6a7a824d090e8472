"""The package's layers, checked from the source: no import circle anywhere in ``ytun``,
and each layer imports only the ones below it (codec < yamux < registry < tunnel <
control, inspector < cluster < command line)."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

import ytun

PACKAGE = pathlib.Path(ytun.__file__).resolve().parent

# Lower layers first; a module may import its own layer and the ones before it.
LAYERS = [
    (
        "ytun._version",
        "ytun._alloc",
        "ytun._const",
        "ytun._twins",
        "ytun.errors",
        "ytun._frames",
        "ytun._frames_py",
        "ytun._http",
        "ytun._http_py",
    ),
    ("ytun.yamux",),
    ("ytun.registry",),
    ("ytun.tunnel",),
    ("ytun.control", "ytun.inspector"),
    ("ytun.cluster",),
    ("ytun", "ytun.cli", "ytun.admin_commands", "ytun.settings", "ytun.demo", "ytun.__main__"),
]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    found = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    for name in ("_frames", "_http"):
        pyx = PACKAGE / f"{name}.pyx"
        if pyx.exists():
            found[f"ytun.{name}"] = pyx
    return found


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The ytun modules ``name`` imports when it runs (not under ``if TYPE_CHECKING``)."""
    text = path.read_text()
    if path.suffix == ".pyx":  # Cython syntax: only its plain Python imports matter here
        return {m for m in re.findall(r"^from (ytun[\w.]*) import", text, re.M) if m in known}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(text))
    return {module for module in found if module in known}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) - {name} for name, path in found.items()}


def layer_of(name: str) -> int:
    best = -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or (prefix != "ytun" and name.startswith(prefix + ".")):
                best = index
    assert best >= 0, f"{name} belongs to no layer"
    return best


def test_no_import_circle() -> None:
    edges = graph()
    done: set[str] = set()
    path: list[str] = []

    def walk(name: str) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            pytest.fail("import circle: " + " -> ".join(cycle))
        if name in done:
            return
        path.append(name)
        for target in sorted(edges[name]):
            walk(target)
        path.pop()
        done.add(name)

    for name in sorted(edges):
        walk(name)


def test_each_layer_imports_only_lower_layers() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(name)
    ]
    assert not wrong


def test_the_graph_sees_real_imports() -> None:
    """Guards the checker itself: a known edge of each kind must be found."""
    edges = graph()
    assert "ytun.yamux.codec" in edges["ytun.yamux.session"]  # from . import codec
    assert "ytun.tunnel.links" in edges["ytun.tunnel.server"]  # from .links import ...
    assert "ytun.yamux" in edges["ytun.tunnel.client"]  # from ..yamux import ...
    assert "ytun.errors" in edges["ytun._frames_py"]


# Every module but the CLI entry point, and the compiled codec only where it was built.
IMPORTABLE = sorted(
    name
    for name in modules()
    if name != "ytun.__main__" and importlib.util.find_spec(name) is not None
)


@pytest.mark.parametrize("name", IMPORTABLE)
def test_every_module_imports_on_its_own(name: str) -> None:
    """Importing any one module first works: no "partially initialized module" error,
    whatever the entry point (a script, a test, ``python -m``)."""
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
