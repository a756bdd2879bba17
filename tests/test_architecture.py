"""The package's shape, checked: module sizes, an acyclic import graph, and the layers of issue 11.

These tests read the source (with :mod:`ast`) or import modules in a fresh interpreter; they run no
Redis. They hold the design in place: a module over 500 lines, an import cycle, the engine reaching
for chat or web code, a chat module naming the concrete SQLite store, or ``serve`` loading the demo
harness all fail here with the module named, so the next change cannot slip back unnoticed.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "bot"
MAX_LINES = 500

WEB_OR_CHAT = ("bot.chat", "bot.app", "bot.webhook", "bot.web", "aiohttp")
"""What the core (engine, runner, store, lifecycle) must never import: it is driven by them."""

CORE = ("bot.engine", "bot.runner", "bot.store", "bot.lifecycle")

SQLITE = "bot.store.sqlite"
"""The concrete backend: ``bot.store.sqlite`` and its ``sqlite_*`` siblings."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def under(name: str, prefixes: tuple[str, ...] | str) -> bool:
    """``name`` is one of ``prefixes`` or inside one of them (``bot.app`` is not ``bot.approval_rules``)."""
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@dataclass(frozen=True)
class Import:
    """One import statement's target: the module named, and the names taken from it."""

    module: str
    names: tuple[str, ...]
    line: int
    module_level: bool


def _absolute(importer: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    is_package = MODULES.get(importer, Path()).name == "__init__.py"
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str) -> list[Import]:
    """Every import in module ``name``; ``module_level`` is False inside functions and under
    ``if TYPE_CHECKING`` (those do not run when the module is imported)."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, (), node.lineno, module_level))
        elif isinstance(node, ast.ImportFrom):
            names = tuple(a.name for a in node.names)
            found.append(Import(_absolute(name, node), names, node.lineno, module_level))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.iter_child_nodes(node):
                visit(child, False)
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, module_level)
        else:  # class bodies, try/except, with, plain if: they run at import
            for child in ast.iter_child_nodes(node):
                visit(child, module_level)

    visit(tree, True)
    return found


def targets_of(importer: str, imp: Import) -> Iterator[str]:
    """The modules of ``bot`` an import runs: the module named, a submodule taken by name
    (``from bot.steps import redis_info``), and the packages on the way that the importer is not
    already inside (importing ``bot.store.records`` from ``bot.runner`` runs ``bot/store/__init__``)."""
    if not under(imp.module, "bot"):
        return
    named = [imp.module, *(f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in MODULES)]
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    for mod in named:
        parts = mod.split(".")
        for i in range(2, len(parts) + 1):
            step = ".".join(parts[:i])
            if step in MODULES and step not in own and step != importer:
                yield step


def graph() -> dict[str, set[str]]:
    """The module-level import graph of ``bot`` (edges between its own modules)."""
    return {
        name: {t for imp in imports_of(name) if imp.module_level for t in targets_of(name, imp)}
        for name in MODULES
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges) + 100))
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def loaded_after_import(*modules: str) -> list[str]:
    """The modules a fresh interpreter holds after importing ``modules`` (nothing else runs)."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"importing {', '.join(modules)} failed:\n{out.stderr}"
    loaded: list[str] = json.loads(out.stdout)
    return loaded


# -- the tests -------------------------------------------------------------------------------------


def test_the_graph_builder_sees_real_edges_and_cycles() -> None:
    """The checks below are only as good as the graph: it must see known edges and find a cycle."""
    edges = graph()
    assert "bot.lifecycle" in edges["bot.store.sqlite_moves"]
    assert "bot.store" in edges["bot.runner.core"], "a package's __init__ runs on `from bot.store import`"
    assert "bot.steps.redis_info" in edges["bot.steps"], "`from pkg import submodule` is an edge"
    assert "bot.store" not in edges["bot.store.sqlite_moves"], "a module is inside its own package"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_in_bot_is_over_500_lines() -> None:
    """Issue 11: modules you can read in one sitting. The message names each module and its size."""
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_the_import_graph_of_bot_has_no_cycles() -> None:
    """A cycle makes import order matter and hides which layer depends on which. Imports inside
    functions and under ``if TYPE_CHECKING`` are not counted (they do not run at import)."""
    assert cycles(graph()) == []


@pytest.mark.parametrize("layer", CORE)
def test_the_core_imports_no_chat_web_or_aiohttp_code(layer: str) -> None:
    """The engine is driven by chat and web code, never the other way round: no import of it
    anywhere in the core's modules (not even inside a function), and none in the modules a fresh
    interpreter loads with it."""
    direct = [
        f"{name}:{imp.line} imports {imp.module}"
        for name in MODULES
        if under(name, layer)
        for imp in imports_of(name)
        if under(imp.module, WEB_OR_CHAT)
    ]
    assert direct == []
    loaded = [m for m in loaded_after_import(layer) if under(m, WEB_OR_CHAT)]
    assert loaded == [], f"importing {layer} loads {loaded}"


def test_chat_modules_never_import_the_sqlite_store() -> None:
    """Chat backends get the engine and the ``Store`` protocol: naming the SQLite store (its module,
    or ``SQLiteStore`` / ``open_store`` from ``bot.store``) would tie them to one backend."""
    offenders = []
    for name in MODULES:
        if not under(name, "bot.chat"):
            continue
        for imp in imports_of(name):
            if imp.module.startswith(SQLITE) or (
                imp.module == "bot.store" and {"SQLiteStore", "open_store", "sqlite"} & set(imp.names)
            ):
                offenders.append(f"{name}:{imp.line} imports {imp.module} {imp.names}")
    assert offenders == []


def test_serve_does_not_import_the_demo_or_the_local_process_harness() -> None:
    """``python -m bot serve`` loads ``bot.__main__`` and ``bot.app`` (and, when it runs, the
    preflight and the console notifier): none of them may pull in ``bot.demo`` or ``bot.localstack``,
    which start processes and are for ``make demo`` and the tests only."""
    loaded = loaded_after_import("bot.__main__", "bot.app", "bot.preflight", "bot.chat.console")
    assert "bot.app" in loaded and "bot.__main__" in loaded
    assert [m for m in loaded if under(m, ("bot.demo", "bot.localstack"))] == []
