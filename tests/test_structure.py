"""The package's layering: no import cycles, and each layer imports only the layers below it.

data -> models -> training -> experiments, with runs (the records) beside them: runs/ reads and
writes records and never trains, training/ never reaches up into experiments/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import shoshin

PACKAGE = Path(shoshin.__file__).parent


def _imports(lazy: bool = True) -> dict[str, set[str]]:
    """Module -> the shoshin modules it imports: at module level, and with `lazy` also inside
    functions (an import deferred to dodge a cycle is still a cycle in the design)."""
    modules = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if lazy else tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in modules and m not in ("shoshin", name)}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_in_the_package():
    assert _cycle(_imports(lazy=False)) is None


def test_no_import_cycle_at_all_between_training_records_and_experiments():
    layers = ("shoshin.training", "shoshin.runs", "shoshin.experiments")
    graph = {
        module: {m for m in imported if m.startswith(layers)}
        for module, imported in _imports().items()
        if module.startswith(layers)
    }
    assert _cycle(graph) is None


def test_records_do_not_train_and_training_does_not_run_experiments():
    graph = _imports()
    for module, imported in graph.items():
        if module.startswith("shoshin.runs"):
            upward = {
                m for m in imported if m.startswith(("shoshin.training", "shoshin.experiments"))
            }
            assert not upward, f"{module} (records) imports {upward}"
        if module.startswith("shoshin.training"):
            upward = {m for m in imported if m.startswith("shoshin.experiments")}
            assert not upward, f"{module} (training) imports {upward}"
