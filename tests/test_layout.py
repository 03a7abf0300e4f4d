"""The package's shape: no import circle, and ``server/`` only speaks HTTP.

Read from the source with ``ast`` (every import counts, those under ``TYPE_CHECKING`` and
inside functions too: a circle hidden from the interpreter is still one for the reader).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import slatebandit
from slatebandit.server import routes

PACKAGE = Path(slatebandit.__file__).parent
PARTS = ("slatebandit.bandit", "slatebandit.retrieval")  # reached only through the recommender


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports (a name imported from a package counts as
    its module if it is one, else as the package)."""

    def owner(name: str) -> str | None:
        while name not in modules:
            if "." not in name:
                return None
            name = name.rsplit(".", 1)[0]
        return name

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                target = full if full in modules else owner(node.module)
                if target:
                    found.add(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = owner(alias.name)
                if target:
                    found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_the_package_imports_itself_back() -> None:
    assert _circles(_graph()) == []


def test_the_server_reaches_the_parts_only_through_the_recommender() -> None:
    graph = _graph()
    server = {name: deps for name, deps in graph.items() if name.startswith("slatebandit.server")}
    assert server, "no server modules found"
    for name, deps in server.items():
        parts = sorted(
            d for d in deps if d.startswith(("slatebandit.bandit", "slatebandit.retrieval"))
        )
        assert parts == [], f"{name} imports {parts}"


def test_the_slate_handler_only_parses_calls_and_encodes() -> None:
    lines = inspect.getsource(routes.create_slate).strip().splitlines()
    assert len(lines) <= 25


def test_the_simulator_and_the_item_know_nothing_of_storage() -> None:
    """The simulator talks to the HTTP API; the item is what every layer shares."""
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("slatebandit.simulate") or name == "slatebandit.items":
            stored = sorted(d for d in deps if d.startswith("slatebandit.logging"))
            assert stored == [], f"{name} imports {stored}"
