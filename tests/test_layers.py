"""The package's layers: every module imports only from its own layer or the layers below it, and never a private
name of another module. Static (AST): imports inside functions and under TYPE_CHECKING count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; a module may import its own layer and the ones before it
LAYERS: list[tuple[str, ...]] = [
    ("aha.grpo", "aha.console", "aha.settings", "aha.devices"),  # L0: the maths, console, settings, hardware
    ("aha.data", "aha.models", "aha.rollout", "aha.rewards", "aha.tasks", "aha.sandbox", "aha.tools"),  # L1
    ("aha.train",),  # L2: the trainers
    ("aha.eval",),  # L3: the evaluator
    ("aha.workflows",),  # L4: what a command runs
    ("aha.cli",),  # L5: argparse
]


def layer_of(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None  # the package root (aha/__init__.py: the public facade) sits above every layer


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = SRC) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names imported from it) for every import of an aha module in `path`."""
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "aha"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "aha":  # a private alias (`import x as _x`) counts as a private name too
                out.append(
                    (node.lineno, mod, [a.asname if (a.asname or "").startswith("_") else a.name for a in node.names])
                )
    return out


def is_module(name: str, root: Path = SRC) -> bool:
    path = root / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def upward_imports(path: Path, root: Path = SRC) -> list[str]:
    """Each import in `path` of a module in a higher layer than its own."""
    mine = layer_of(module_name(path, root))
    if mine is None:
        return []
    bad = []
    for line, mod, names in imports(path, root):
        # `from aha.x import y` may name a submodule y: judge by the deepest module it names
        subs = [f"{mod}.{n}" for n in names]
        targets = [s for s in subs if is_module(s, root)] or [mod]
        for target in targets:
            theirs = layer_of(target)
            if theirs is None or theirs > mine:
                bad.append(f"{path.relative_to(root)}:{line} imports {target} (layer {theirs}) from layer {mine}")
    return bad


def private_imports(path: Path, root: Path = SRC) -> list[str]:
    here = module_name(path, root)
    return [
        f"{path.relative_to(root)}:{line} imports {n} from {mod}"
        for line, mod, names in imports(path, root)
        for n in names
        if n.startswith("_") and not n.startswith("__") and mod != here
    ]


MODULES = sorted((SRC / "aha").rglob("*.py"))


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in MODULES if layer_of(module_name(p)) is None and module_name(p) != "aha"]
    assert not unplaced, f"modules outside every layer (add them to LAYERS): {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_only_go_down(path: Path):
    bad = upward_imports(path)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_private_name_crosses_a_module(path: Path):
    bad = private_imports(path)
    assert not bad, "\n".join(bad)


def test_the_checks_catch_violations(tmp_path):
    """An upward import (also a lazy one, and one naming a submodule) and a private import are reported."""
    (tmp_path / "aha" / "data").mkdir(parents=True)
    (tmp_path / "aha" / "workflows").mkdir()
    (tmp_path / "aha" / "workflows" / "run.py").write_text("")
    bad = tmp_path / "aha" / "data" / "bad.py"
    bad.write_text("from aha.grpo import policy_loss\ndef f():\n    from aha.workflows import run\n")
    assert upward_imports(bad, tmp_path) == ["aha/data/bad.py:3 imports aha.workflows.run (layer 4) from layer 1"]
    bad.write_text("from aha.rollout.sampler import _pick\n")
    assert private_imports(bad, tmp_path) == ["aha/data/bad.py:1 imports _pick from aha.rollout.sampler"]
    bad.write_text("from aha.rollout import sampler as _sampler\n")
    assert private_imports(bad, tmp_path) == ["aha/data/bad.py:1 imports _sampler from aha.rollout"]
    assert upward_imports(bad, tmp_path) == []


def test_no_module_is_named_after_history_or_size():
    words = ("_read", "_set", "_run", "part", "_extra", "_misc", "_more", "_new", "_old", "2")
    private = [p for p in MODULES if p.stem.startswith("_") and p.stem not in ("__init__", "__main__")]
    bad = [module_name(p) for p in MODULES if any(w in p.stem for w in words)] + [module_name(p) for p in private]
    assert not bad, f"modules named after history or size, or private: {bad}"
