"""The package's shape: stage layers that only import downwards, no import cycles, light low layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import saeuron

PACKAGE = Path(saeuron.__file__).parent
LAYERS = [
    ("saeuron.config", "saeuron.console", "saeuron.atomic_files", "saeuron.storage", "saeuron.sections", "saeuron.sae"),
    ("saeuron.diffusion",),
    ("saeuron.benchmarks",),
    ("saeuron.cluster",),
    ("saeuron.collection",),
    ("saeuron.training",),
    ("saeuron.method",),
    ("saeuron.evaluation", "saeuron.attack", "saeuron.atlas"),
    ("saeuron.tuning",),
    ("saeuron.study",),
]
"""Lowest first: the method's data flow (prompts → activations → SAE → statistics → recipe → images →
scores), with the plain-torch SAE and the shared config at the bottom and the study on top."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """saeuron modules a file imports, anywhere in it (function-level imports count too)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]) if node.level else node.module or ""
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m.rstrip(".") for m in found if m.startswith("saeuron")}


def layer_of(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_module_belongs_to_a_layer():
    unplaced = [m for m in modules() if m != "saeuron" and layer_of(m) is None]
    assert unplaced == []


def test_lower_layers_never_import_higher_ones():
    upward = []
    for module, path in modules().items():
        if module == "saeuron":  # the public API re-exports from every layer
            continue
        for target in imports_of(path):
            if target != "saeuron" and (layer_of(target) or 0) > layer_of(module):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_cycles():
    known = modules()
    graph = {}
    for module, path in known.items():
        targets = set()
        for target in imports_of(path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                targets.add(target)
        graph[module] = targets
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_sae_hooks_and_benchmarks_import_without_ray_or_mlflow():
    """The GPU machine has torch but not Ray or MLflow: the SAE, the hooks and the benchmarks must load there."""
    code = (
        "import sys, saeuron.sae, saeuron.diffusion.hooks, saeuron.benchmarks, saeuron.method.edit; "
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_no_module_is_longer_than_a_reader_can_hold():
    lengths = {m: len(p.read_text().splitlines()) for m, p in modules().items()}
    assert {m: n for m, n in lengths.items() if n > 320} == {}
