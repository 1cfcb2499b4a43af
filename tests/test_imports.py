"""The packages' import graph has no cycles, counting the imports inside functions too.

An import moved into a function hides a cycle from Python but not from a reader: each module should be
readable on top of the ones it imports (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dtvg_engine", "dtvg_tui")


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its `__init__.py`)."""
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of the packages that module `name` imports anywhere in its file."""

    def resolve(dotted: str) -> str | None:  # `pkg.mod.attr` → `pkg.mod`
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {resolve(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            targets |= {resolve(f"{base}.{alias.name}") for alias in node.names}
    return targets - {None, name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (`[a, b, ..., a]`), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        path.append(node)
        for child in sorted(edges.get(node, ())):
            if cycle := visit(child):
                return cycle
        path.pop()
        done.add(node)
        return None

    return next((cycle for node in sorted(edges) if (cycle := visit(node))), None)


def test_the_graph_reads_imports_inside_functions() -> None:
    edges = graph()
    assert "dtvg_engine.studies.pipeline" in edges["dtvg_engine.cli.run"]  # imported inside a command
    assert "dtvg_engine.worker" in edges["dtvg_engine.slurm_submit"]  # inside a method
    assert "dtvg_engine.runs.runfolder" in edges["dtvg_engine.config"]  # inside a function


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_engine_keeps_its_modules_in_rooms() -> None:
    """Beside its rooms the engine's top holds only what every room uses and the processes started by module
    path, and a room's `__init__` imports nothing (docs/architecture.md, 'Layers')."""
    rooms = {"method", "train", "runs", "studies"}
    top = {name.split(".")[1] for name in modules() if name.startswith("dtvg_engine.")}
    assert top == rooms | {"cli", "config", "errors", "worker", "slurm_submit"}
    edges = graph()
    assert {room: edges[f"dtvg_engine.{room}"] for room in rooms} == {room: set() for room in rooms}
