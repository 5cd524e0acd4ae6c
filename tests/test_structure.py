"""The package's floors: each module imports only from its own floor or below, and nothing cycles.

Every import counts, function-local ones included (an import deferred to dodge a cycle is still a
cycle in the design): the modules are parsed with `ast`, not imported. A test also shows that the
checker fails when an upward import or a cycle is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import shoshin

PACKAGE = Path(shoshin.__file__).parent

# Bottom to top. A module belongs to the floor of the longest prefix that names it.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "storage: files, text, checkpoint format, run records; errors, devices, progress, "
        "statistics",
        (
            "shoshin.storage",
            "shoshin.errors",
            "shoshin.device",
            "shoshin.progress",
            "shoshin.stats",
        ),
    ),
    (
        "config: plain data, and the registry of architectures",
        ("shoshin.config", "shoshin.architectures"),
    ),
    (
        "the run store: run directories, their lock, provenance, the MLflow mirror",
        (
            "shoshin.runs.store",
            "shoshin.runs.lock",
            "shoshin.runs.provenance",
            "shoshin.runs.mlflow_sink",
        ),
    ),
    ("data", ("shoshin.data",)),
    ("models", ("shoshin.models",)),
    (
        "training, generation, interop, loading a model",
        ("shoshin.training", "shoshin.generation", "shoshin.interop", "shoshin.loading"),
    ),
    (
        "evaluation, serving, experiments, runs' reporting",
        ("shoshin.evaluation", "shoshin.serving", "shoshin.experiments", "shoshin.runs"),
    ),
    (
        "the command line and the package's front door",
        ("shoshin.cli", "shoshin.__main__", "shoshin"),
    ),
)


def floor_of(module: str, floors=FLOORS) -> int:
    """The index of `module`'s floor (the longest matching prefix wins)."""
    best, length = None, -1
    for i, (_, prefixes) in enumerate(floors):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = i, len(prefix)
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    return best


def imports(package: Path, name: str = "shoshin") -> dict[str, set[str]]:
    """Module -> the modules of the package it imports, anywhere in its body (functions too)."""
    modules = {
        ".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        found = set()
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x, from ..y import z
                    parent = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1])
                    base = f"{parent}.{base}" if base else parent
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[module] = {m for m in found if m in modules and m not in (name, module)}
    return graph


def upward(graph: dict[str, set[str]], floors=FLOORS) -> list[str]:
    """Every import that runs from a floor up to a higher one, as 'a (floor) -> b (floor)'."""
    return [
        f"{a} ({floors[floor_of(a, floors)][0]}) -> {b} ({floors[floor_of(b, floors)][0]})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if floor_of(b, floors) > floor_of(a, floors)
    ]


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


TOY_FLOORS = (("low", ("pkg.low",)), ("high", ("pkg.high", "pkg")))


def test_every_import_runs_down_a_floor_or_stays_on_it():
    assert upward(imports(PACKAGE)) == []


def test_no_import_cycle_at_all():
    assert cycle(imports(PACKAGE)) is None


def test_the_checker_sees_an_upward_import_even_inside_a_function(tmp_path):
    clean = _package(tmp_path, {"low.py": "X = 1\n", "high.py": "from pkg.low import X\n"})
    assert upward(imports(clean, "pkg"), TOY_FLOORS) == []
    (clean / "low.py").write_text("def f():\n    from pkg.high import Y\n    return Y\n")
    assert upward(imports(clean, "pkg"), TOY_FLOORS) == ["pkg.low (low) -> pkg.high (high)"]
    (clean / "low.py").write_text("def f():\n    from . import high\n")  # relative, too
    assert upward(imports(clean, "pkg"), TOY_FLOORS) == ["pkg.low (low) -> pkg.high (high)"]


def test_the_checker_sees_a_cycle_made_of_function_local_imports(tmp_path):
    root = _package(
        tmp_path,
        {
            "high/__init__.py": "",
            "high/a.py": "def f():\n    import pkg.high.b\n",
            "high/b.py": "from pkg.high import c\n",
            "high/c.py": "X = 1\n",
        },
    )
    assert cycle(imports(root, "pkg")) is None
    (root / "high/c.py").write_text("def g():\n    from pkg.high.a import f\n")
    assert cycle(imports(root, "pkg")) == ["pkg.high.a", "pkg.high.b", "pkg.high.c", "pkg.high.a"]


def test_every_module_is_on_a_floor():
    for module in imports(PACKAGE):
        floor_of(module)
