"""The architecture as a test: imports only point down (composition root -> plugins -> library), with no cycle.

The import graph is read with ``ast`` from the source files (nothing is imported): every ``import`` and
``from ... import`` of a project module, including those inside functions, is an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import tiny_overrides
from unimim.app.registry import MODALITIES, OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("unimim", "modalities")
COMPOSITION_ROOT = "unimim.app"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules that ``path`` (module ``name``) imports, resolved to the longest known module name."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = name.split(".") if is_package else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_library_never_imports_the_plugins():
    graph = import_graph()
    offenders = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                       if in_package(m, "unimim") and not in_package(m, COMPOSITION_ROOT)
                       and in_package(t, "modalities"))
    assert not offenders, "library modules importing plugins:\n" + "\n".join(offenders)


def test_the_plugins_never_import_the_composition_root():
    graph = import_graph()
    offenders = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                       if in_package(m, "modalities") and in_package(t, COMPOSITION_ROOT))
    assert not offenders, "plugins importing the composition root:\n" + "\n".join(offenders)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of a directed graph found by depth-first search (each as a closed path)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycle():
    graph = import_graph()
    # a package's __init__ importing its own submodules is not a cycle of concepts: drop parent -> child edges
    edges = {m: {t for t in ts if not in_package(t, m)} for m, ts in graph.items()}
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_reader_sees_a_cycle_and_a_boundary_crossing(tmp_path):
    """The checks above cannot pass by reading nothing: the same reader finds edges in hand-written sources."""
    (tmp_path / "a.py").write_text("from unimim.core import batch\n\ndef f():\n    import modalities.base\n")
    edges = imports_of(tmp_path / "a.py", "unimim.core.a", {"unimim.core.batch", "modalities.base", "unimim.core"})
    assert edges == {"unimim.core.batch", "modalities.base"}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "modalities.image.model.adapter" in graph["modalities.image"]
    assert "modalities.image" in graph["unimim.app.registry"]


def test_every_registered_objective_has_a_recipe_and_tiny_settings_per_modality(tmp_path):
    recipes = {}
    from unimim.app.experiment import load_recipe

    for path in sorted(ROOT.joinpath("recipes").rglob("*.yaml")):
        if any(part.startswith("_") for part in path.relative_to(ROOT).parts) or path.name.startswith("finetune_") \
                or path.parent.name == "bench":
            continue  # a base of other recipes (image/_base/), a fine-tune recipe or a suite, not a recipe
        cfg = load_recipe(path)
        recipes.setdefault((cfg.modality, cfg.objective), path)
    for name, spec in OBJECTIVES.items():
        for modality in spec.modalities:
            assert modality in MODALITIES
            assert (modality, name) in recipes, f"no recipe for {modality}/{name}"
            path = recipes[(modality, name)]
            cfg = load_recipe(path, tiny_overrides(modality, name, tmp_path) + [f"train.out_dir={tmp_path}"])
            assert cfg.train.steps == 3 and cfg.encoder.dim <= 32  # tiny: seconds, not minutes
        assert spec.logs, f"objective {name} declares no log keys"
