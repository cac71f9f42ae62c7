"""The direction of dependencies between the packages, read from the source (no import runs).

    kosmo/    the lower layer: domain, delivery, wire, configuration, storage, pure HTTP pieces
    actors/   the Trio program: actors, the gateway supervisor, the HTTP front (imports kosmo)
    bridge/   the bridge daemon (imports kosmo, and actors.mqtt, the shared MQTT actor)

The composition roots (kosmo/cli.py, kosmo/up.py, kosmo/__main__.py) wire the upper layers
together, and import them only inside the functions that need them. Any other import upwards,
and any cycle between modules at import time, fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kosmo", "actors", "bridge")
COMPOSITION_ROOTS = {"kosmo.cli", "kosmo.up", "kosmo.__main__"}
# What each package may import from the others.
ALLOWED = {
    "kosmo": ("kosmo",),
    "actors": ("kosmo", "actors"),
    "bridge": ("kosmo", "bridge", "actors.mqtt"),
}
SQL_MODULES = ("psycopg", "psycopg_pool", "sqlite3")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (or module.name for ``from m import name``)
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[:2] == ["sql"]:  # shipped as kosmo.sql, holds no Python
        parts = ["kosmo", "sql", *parts[1:]]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))

    def walk(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno, in_function)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, path, child)
                for alias in child.names:
                    yield Import(module, f"{base}.{alias.name}", child.lineno, in_function)
            yield from walk(child, in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    yield from walk(tree, False)


def _package(name: str) -> str:
    return name.split(".")[0]


def _within(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def all_imports() -> list[Import]:
    return [imp for module, path in project_modules().items()
            for imp in imports_of(module, path) if _package(imp.target) in PACKAGES]


def layer_violations(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        source = _package(imp.module)
        if _within(imp.target, ALLOWED[source]):
            continue
        if imp.module in COMPOSITION_ROOTS and imp.in_function:
            continue
        bad.append(f"{imp.module}:{imp.line} imports {imp.target}")
    return bad


def _existing_module(target: str, modules: set[str]) -> str | None:
    """``a.b.c`` -> the longest prefix that is a project module (``from a.b import c``)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if (candidate := ".".join(parts[:end])) in modules:
            return candidate
    return None


def import_time_graph(imports: list[Import], modules: set[str]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.in_function:
            continue
        target = _existing_module(imp.target, modules)
        # A package's __init__ is imported with each of its modules; an import of the package
        # itself is not an edge back from its own modules.
        if target is not None and target != imp.module and not imp.module.startswith(
                target + "."):
            graph[imp.module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == GREY:
                return [*stack[stack.index(nxt):], nxt]
            if colour[nxt] == WHITE and (found := visit(nxt)):
                return found
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE and (found := visit(node)):
            return found
    return None


def test_dependencies_point_one_way():
    assert layer_violations(all_imports()) == []


def test_no_module_cycle_at_import_time():
    modules = set(project_modules())
    assert find_cycle(import_time_graph(all_imports(), modules)) is None


def test_the_wire_contract_imports_no_sql():
    """kosmo.wire is shared by the gateway and the bridge: nothing it pulls in touches SQL."""
    modules = project_modules()
    graph = import_time_graph(all_imports(), set(modules))
    seen, todo = set(), ["kosmo.wire"]
    while todo:
        if (module := todo.pop()) not in seen:
            seen.add(module)
            todo.extend(graph[module])
    for module in seen:
        sql = [imp.target for imp in imports_of(module, modules[module])
               if _within(imp.target, SQL_MODULES)]
        assert not sql, f"{module} (imported by kosmo.wire) imports {sql}"
        assert not module.endswith("_store")
        assert module not in {"kosmo.db", "kosmo.reads"}


# The checks above must be able to fail: each is run once on a made-up import that breaks it.

def test_an_upward_import_is_caught():
    assert layer_violations([Import("kosmo.domain", "actors.ledger.Ledger", 1, False)])
    assert layer_violations([Import("kosmo.domain", "actors.ledger.Ledger", 1, True)])
    assert layer_violations([Import("bridge.sender", "actors.ledger", 1, False)])
    assert layer_violations([Import("actors.mqtt", "bridge.radio", 1, False)])
    assert layer_violations([Import("kosmo.up", "bridge.daemon.run_bridge", 1, False)])
    assert not layer_violations([Import("kosmo.up", "bridge.daemon.run_bridge", 1, True)])
    assert not layer_violations([Import("bridge.daemon", "actors.mqtt.MqttActor", 1, False)])


def test_a_cycle_is_caught():
    imports = [Import("actors.http.app", "actors.http.stream.register", 1, False),
               Import("actors.http.stream", "actors.http.app.Services", 1, False)]
    graph = import_time_graph(imports, {"actors.http.app", "actors.http.stream"})
    assert find_cycle(graph) == ["actors.http.app", "actors.http.stream", "actors.http.app"]


@pytest.mark.parametrize("source", ["from ..db import Database\n",
                                    "from . import db\n"])
def test_relative_imports_are_resolved(tmp_path, source):
    path = tmp_path / "wire.py"
    path.write_text(source)
    [imp] = imports_of("kosmo.api.wire", path)
    assert imp.target in {"kosmo.db.Database", "kosmo.api.db"}
