"""The package's layout is its architecture (docs/design.md, "The package"): read from the imports
alone, there is no cycle, no subpackage imports one from a layer above it, the top level stays
small, every import inside a function says why it is deferred, and the method imports without
DeepSpeed or transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lsa_ds"

LAYERS = {
    "errors": 0, "cli_help": 0,
    "recipe": 1, "rundir": 1,
    "data": 2,
    "model": 3, "align": 3,
    "eval": 4, "synthetic": 4,
    "train": 5,
    "sweep": 6,
    "quiet": 7, "demo": 7, "cli": 7,
}
"""Each top-level module or subpackage and its layer: a module may import its own layer's modules
(inside its own subpackage) and lower layers, never a higher one. train sits above eval because
its in-training evaluation calls eval's metrics; eval never imports train."""

MAX_TOP_LEVEL = 6
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, wherever the import sits (a function-local import
    counts: it hides a dependency, it does not remove it)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lsa_ds"):
                # `from lsa_ds.x import y` imports the module lsa_ds.x.y when there is one
                names = [f"{node.module}.{a.name}" for a in node.names]
                targets |= {n if n in modules else node.module for n in names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("lsa_ds")}
        graph[name] = targets - {name}
    return graph


def _unit(module: str) -> str:
    """The top-level module or subpackage a module belongs to (`lsa_ds.train.loop` -> `train`)."""
    return module.split(".")[1] if module != "lsa_ds" else ""


def test_no_import_cycle():
    graph = _graph()
    done: set[str] = set()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_no_module_imports_from_a_layer_above():
    graph = _graph()
    assert {_unit(m) for m in graph} - {""} <= set(LAYERS), "a new top-level module or subpackage needs a layer here"
    upward = [f"{m} -> {t}" for m, targets in graph.items() for t in targets
              if _unit(m) and _unit(t) and LAYERS[_unit(t)] > LAYERS[_unit(m)]]
    same_layer = [f"{m} -> {t}" for m, targets in graph.items() for t in targets
                  if _unit(m) != _unit(t) and _unit(m) and _unit(t) and LAYERS[_unit(t)] == LAYERS[_unit(m)]
                  and LAYERS[_unit(m)] not in (0, 7)]
    assert not upward, "imports from a higher layer: " + ", ".join(sorted(upward))
    assert not same_layer, "imports across subpackages of one layer: " + ", ".join(sorted(same_layer))


def test_the_top_level_is_small_and_files_are_short():
    top = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules at lsa_ds/: {sorted(top)}"
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_every_import_inside_a_function_says_why_it_is_deferred():
    """An import inside a function may defer a heavy dependency, and a comment says so (on the
    import, or above the block of imports it starts); the package's own modules are never deferred."""
    missing, own = [], []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in (n for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom))):
                target = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if (target or "").startswith("lsa_ds"):
                    own.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
                    continue
                row = node.lineno - 1
                while row > 0 and lines[row - 1].strip().startswith(("import ", "from ")):
                    row -= 1  # the first import of the block this one belongs to
                said = any("deferred" in lines[i] for i in range(row - 1, node.end_lineno) if i >= 0)
                if not said:
                    missing.append(f"{path.relative_to(PACKAGE)}:{node.lineno} ({target})")
    assert not own, "the package's own modules imported inside functions: " + ", ".join(own)
    assert not missing, "imports inside functions without a `deferred:` comment: " + ", ".join(missing)


@pytest.mark.parametrize("module", ["lsa_ds.align", "lsa_ds.recipe"])
def test_the_method_and_the_recipe_import_without_deepspeed_or_transformers(module):
    blocked = "import sys; sys.modules.update(deepspeed=None, transformers=None, peft=None); "
    proc = subprocess.run([sys.executable, "-c", blocked + f"import {module}; print(sorted({module}.__all__))"],
                          capture_output=True, text=True, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if module == "lsa_ds.align":
        assert "alignment_losses" in proc.stdout and "make_views" in proc.stdout and "micro_step_loss" in proc.stdout


def test_scripts_outside_the_package_import_what_the_package_has():
    """bench/, docs/, examples/, scripts/ and tests/ import from the package by name; a module moved
    or a name renamed must not leave one of them pointing at nothing (docs/study/subset_correlation.py
    kept the flat layout's names for a reorganisation)."""
    import importlib

    def found(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a name below a module that is not a package
            return False

    root = PACKAGE.parent
    missing = []
    for path in sorted(p for d in ("bench", "docs", "examples", "scripts", "tests") for p in (root / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lsa_ds":
                module = importlib.import_module(node.module) if found(node.module) else None
                gone = [a.name for a in node.names
                        if module is None or not (hasattr(module, a.name) or found(f"{node.module}.{a.name}"))]
                missing += [f"{path.relative_to(root)}:{node.lineno} from {node.module} import {n}" for n in gone]
            elif isinstance(node, ast.Import):
                missing += [f"{path.relative_to(root)}:{node.lineno} import {a.name}" for a in node.names
                            if a.name.split(".")[0] == "lsa_ds" and not found(a.name)]
    assert not missing, "imports of names the package does not have:\n" + "\n".join(missing)
