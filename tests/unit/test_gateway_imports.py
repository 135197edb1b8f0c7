"""The gateway's modules import one way: no cycles (data types such as Route and the check contract
live in modules of their own)."""

from __future__ import annotations

import ast
from pathlib import Path

import microkit

ROOT = Path(microkit.__file__).parent


def _module_imports(path: Path, package: str) -> set[str]:
    """Modules of `package` this file imports, those under TYPE_CHECKING included (a cycle hidden from
    the interpreter is still one for a reader)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith(package)}


def _graph(package: str) -> dict[str, set[str]]:
    base = ROOT.parent
    graph = {}
    for path in (base / package.replace(".", "/")).rglob("*.py"):
        name = ".".join(path.relative_to(base).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        graph[name] = _module_imports(path, package)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return trail + [node, target]
            if target not in state:
                found = visit(target, trail + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_gateway_modules_have_no_import_cycle():
    graph = _graph("microkit.gateway")
    # a package's __init__ re-exporting its modules is not a cycle of the modules themselves
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    assert _cycle(graph) is None
