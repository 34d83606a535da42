"""The house rules of the source tree (docs/architecture.md), read from its syntax trees: a room
per concept, plumbing (``runtime``) and config on the ground floor, no upward arrows, short
functions and modules, and no reaching into another module's private names."""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "robustgen"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return out


MODULES = _modules()


def _room(module: str) -> str:
    """The top-level package or module under robustgen a module belongs to ("<root>": the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(robustgen module, names imported from it) of every import, also those inside functions."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("robustgen"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("robustgen")]
    return out


def _room_graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for name, (_, tree) in MODULES.items():
        for module, names in _imports(tree):
            targets = [f"{module}.{n}" for n in names] if module == "robustgen" else [module]
            for target in targets:
                if _room(target) != _room(name):
                    graph[_room(name)].add(_room(target))
    return graph


def test_modules_and_functions_are_short():
    long_modules = [f"{name} ({len(path.read_text().splitlines())} lines)" for name, (path, _) in MODULES.items()
                    if len(path.read_text().splitlines()) > MAX_MODULE_LINES]
    long_functions = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
                      for name, (_, tree) in MODULES.items() for node in ast.walk(tree)
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long_modules == [] and long_functions == []


def test_no_module_imports_another_modules_private_names():
    reached = []
    for name, (_, tree) in MODULES.items():
        imported_modules = set()
        for module, names in _imports(tree):
            reached += [f"{name}: {module}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
            imported_modules |= {n for n in names} | {module.rsplit(".", 1)[-1]}
        for node in ast.walk(tree):  # module._name on an imported robustgen module
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported_modules \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                reached.append(f"{name}: {node.value.id}.{node.attr}")
    assert reached == []


def test_the_room_graph_has_no_cycles_and_nothing_reaches_up_through_the_package_root():
    graph = _room_graph()
    assert "<root>" not in {t for targets in graph.values() for t in targets}
    done, active, cycle = set(), [], []

    def visit(room):
        if room in active:
            cycle.append(active[active.index(room):] + [room])
            return
        if room in done:
            return
        active.append(room)
        for target in sorted(graph.get(room, ())):
            visit(target)
        active.pop()
        done.add(room)

    for room in sorted(graph):
        visit(room)
    assert cycle == []


@pytest.mark.parametrize("room,allowed", [
    ("runtime", set()),  # plumbing: below everything
    ("config", {"runtime"}),  # types and ranges; registry names are checked next to the stages
    ("data", {"runtime"}),
    ("models", {"runtime"}),
])
def test_ground_floor_rooms_import_only_what_lies_below(room, allowed):
    assert _room_graph().get(room, set()) <= allowed


@pytest.mark.parametrize("room", ["generate", "label", "evaluate", "attacks", "metrics", "data", "models"])
def test_stage_packages_do_not_import_training_or_the_layers_above(room):
    above = {"train", "stages", "pipeline", "api", "cli", "sweep", "presets", "preflight", "cost", "report"}
    assert _room_graph().get(room, set()) & above == set()


def test_one_fingerprint_module_does_all_hashing():
    hashlib_users = sorted(name for name, (_, tree) in MODULES.items()
                           if any(isinstance(n, ast.Import) and any(a.name == "hashlib" for a in n.names)
                                  for n in ast.walk(tree)))
    assert hashlib_users == ["robustgen.runtime.fingerprint"]
