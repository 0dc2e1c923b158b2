"""Imports point down only: every import of a `service` module (at the top of a module or inside
a function) goes to the importer's own package or to a layer below its own (`service.LAYERS`),
and no modules import each other in a circle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import service
from service import LAYERS

ROOT = Path(service.__file__).resolve().parent

# Known upward imports, each to be removed by the work that owns it; an entry that no longer
# occurs fails the test too, so the list only shrinks.
EXCEPTIONS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = ("service", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path) -> Iterator[str]:
    """The `service` modules `name` imports (`from service.x import y` names `service.x.y` when
    that is a module, else `service.x`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "service")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "service":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in MODULES else base


GRAPH = {name: sorted(set(_imports(name, path)) - {name}) for name, path in MODULES.items()}


def _unit(module: str) -> str:
    """The package or top-level module a module belongs to: `api` for `service.api.fleet`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


LAYER_OF = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def test_every_package_and_top_level_module_has_a_layer() -> None:
    units = {_unit(m) for m in MODULES} - {""}
    assert units - LAYER_OF.keys() == set(), "add them to service.LAYERS"
    assert LAYER_OF.keys() - units == set(), "service.LAYERS names what does not exist"


def upward_imports() -> set[tuple[str, str]]:
    found = set()
    for importer, imported in ((a, b) for a, bs in GRAPH.items() for b in bs):
        here, there = _unit(importer), _unit(imported)
        if not here or not there or here == there:  # `service` itself holds only LAYERS
            continue
        if LAYER_OF[there] <= LAYER_OF[here]:
            found.add((importer, imported))
    return found


def test_no_module_imports_from_its_own_layer_or_above() -> None:
    found = upward_imports()
    assert found - EXCEPTIONS == set(), "imports that run up (or sideways) the layers"
    assert EXCEPTIONS - found == set(), "fixed: remove them from EXCEPTIONS"


def test_no_modules_import_each_other_in_a_circle() -> None:
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for imported in GRAPH.get(module, []):
            if state.get(imported) == 1:
                circles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported)
        path.pop()
        state[module] = 2

    for module in GRAPH:
        if module not in state:
            visit(module)
    assert circles == []


def test_the_check_sees_an_upward_import_and_a_circle() -> None:
    """The graph is read from the code: a known downward import is there, and a made-up upward
    one would be reported."""
    assert "service.ingest.heartbeats" in GRAPH["service.fleet.presence"] or any(
        m.startswith("service.ingest") for m in GRAPH["service.fleet.presence"]
    )
    GRAPH["service.ingest.writer"].append("service.api.state")
    try:
        assert ("service.ingest.writer", "service.api.state") in upward_imports()
    finally:
        GRAPH["service.ingest.writer"].remove("service.api.state")
