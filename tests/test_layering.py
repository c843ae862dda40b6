"""The package imports one way (issue 24): no import cycle between sub-packages or between
files, counting imports inside functions too (a cycle dodged by a late import is still a
cycle), and no ``model_type`` branch outside :mod:`genft_tune.models` (a model family is
one entry of ``models/_families.py``)."""

import ast
import re
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parents[1] / "genft_tune"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path = ROOT) -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(root.rglob("*.py"))}


def _imports(path: Path, known: Set[str]) -> Set[str]:
    """The ``genft_tune`` modules a file imports, anywhere in it (``from pkg import sub``
    counts ``pkg.sub`` when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in known:
                out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return out


def _unit(module: str) -> str:
    """The sub-package a module belongs to (``genft_tune.checkpointing._merge`` ->
    ``genft_tune.checkpointing``); a file directly in ``genft_tune/`` is its own."""
    return ".".join(module.split(".")[:2])


def _cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of a directed graph, or None."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _graphs(root: Path = ROOT):
    modules = _modules(root)
    known = set(modules)
    files: Dict[str, Set[str]] = {}
    units: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        targets = _imports(path, known)
        # a package's __init__ importing its own files is how packages are made, not a cycle;
        # ``import genft_tune`` (its version) runs nothing of the package
        files[name] = {
            t for t in targets
            if t not in (name, "genft_tune") and not (path.name == "__init__.py" and t.startswith(name + "."))
        }
        units.setdefault(_unit(name), set()).update(_unit(t) for t in targets if _unit(t) != _unit(name))
    return files, units


def test_no_import_cycles_between_subpackages():
    _, units = _graphs()
    assert _cycle(units) is None, f"sub-packages import each other: {' -> '.join(_cycle(units))}"


def test_no_import_cycles_between_files():
    files, _ = _graphs()
    assert _cycle(files) is None, f"files import each other: {' -> '.join(_cycle(files))}"


def test_model_families_are_asked_not_named():
    """Merge, verify, the PEFT format, cards, publish, training, the CLI, the methods and
    the recipes ask the family entry."""
    # a model_type branch, or what one family alone has (ViT: its name, classifier, class)
    branch = re.compile(r"""model_type["']?\)?\s*(==|!=|in\b)|["'](vit|head\.weight|AutoModelForImageClassification)["']""")
    paths = [
        *(path for sub in ("checkpointing", "cards", "hub", "training", "_cli", "modules")
          for path in sorted((ROOT / sub).rglob("*.py"))),
        *sorted((ROOT.parent / "recipes").glob("*.py")),
    ]
    offenders = [
        f"{path.relative_to(ROOT.parent)}:{i}: {line.strip()}"
        for path in paths
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if branch.search(line) and not line.lstrip().startswith("#")
    ]
    assert not offenders, "model_type branches outside genft_tune/models:\n" + "\n".join(offenders)


# The package's layers, bottom first: a sub-package imports only from layers below its own
# (README, "Where things live"). The root package holds the version and the torchao hook;
# its lazy ``genft_tune.apply_adapter`` (PEP 562) is the one way up, so that ``import
# genft_tune`` and ``genft-tune ls`` do not load torch.
LAYERS = [
    # files and I/O, the configs catalog; no genft_tune import
    {"genft_tune", "genft_tune._file_names", "genft_tune._fs", "genft_tune._recipe_registry",
     "genft_tune._torchao_compat", "genft_tune._weights"},
    {"genft_tune.modules"},  # the methods: config, math, layer, registry entry, PEFT tuner
    {"genft_tune.models"},  # the model families
    {"genft_tune.datasets", "genft_tune.cards"},  # data sets; model cards and run files
    {"genft_tune.checkpointing"},  # adapter files, merge, verify, PEFT/LoRA/authors' formats
    {"genft_tune.training", "genft_tune.hub", "genft_tune.peft"},  # recipe helpers, publish, PEFT registration, configs
    {"genft_tune._cli", "genft_tune.quickstart"},  # commands
]


def test_subpackages_import_only_layers_below():
    _, units = _graphs()
    rank = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    assert set(units) <= set(rank), f"sub-packages missing from LAYERS: {sorted(set(units) - set(rank))}"
    upward = [
        f"{unit} (layer {rank[unit]}) imports {target} (layer {rank[target]})"
        for unit, targets in units.items()
        if unit != "genft_tune"
        for target in targets
        if target != "genft_tune" and rank[target] >= rank[unit] and target != unit
    ]
    assert not upward, "imports that do not run downwards:\n" + "\n".join(sorted(upward))


def test_the_package_imports_without_docstrings():
    """``python -OO`` strips docstrings (``__doc__`` is None): the builders that document
    themselves from other docstrings must still import."""
    import subprocess
    import sys

    code = "import genft_tune.models, genft_tune.models.vit, genft_tune.training, genft_tune.checkpointing"
    run = subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
