"""The ablation file of `lsa sweep`: its schema, and its expansion into resolved points.

`load_sweep(path, cli_overrides)` reads an ablation file, checks every grid/set key against the
recipe schema, expands the grid (a mapping: the cartesian product of its lists; a list of
mappings: the union of their products), names each point `<sweep>-<label>`, and resolves every
point through `load_recipe` — the loader `lsa train` uses — so any problem is one `UserError`
line naming the ablation file, raised before anything is written or run. docs/sweep.md has the
format.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lsa_ds.errors import UserError
from lsa_ds.recipe import Recipe, load_recipe
from lsa_ds.recipe.checks import schema_problem
from lsa_ds.recipe.files import read_yaml
from lsa_ds.recipe.load import recipe_path

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class AblationFile(BaseModel):
    """The keys of an ablation file besides `grid` (checked by hand for one-line messages)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    base: str
    """The recipe every point starts from, relative to the ablation file."""
    name: str | None = Field(None, pattern=NAME_RE)
    """Sweep name: prefix of every run name and the sweep folder's name (default: the file's stem)."""
    description: str | None = None
    """Free text, shown at the top of the report."""
    grid: Any
    """{dotted.key: [values]} or a list of such mappings (union of their cartesian products)."""
    fixed: dict[str, Any] = Field(default_factory=dict, alias="set")
    """Overrides applied to every point (dotted keys or nested mappings)."""
    requires: list[str] = Field(default_factory=list)
    """Recipes trained first (exactly as written) when their run has not finished."""
    eval: list[str | int | float] | str | bool | None = None
    """Run `lsa eval RUN <args>` on every finished point: a list or string of arguments, or true."""
    slurm: dict[str, str | int] = Field(default_factory=dict)
    """`#SBATCH --key=value` lines for the array script (nodes, gpus-per-node, time, partition)."""


@dataclass
class Point:
    """One resolved run of the sweep."""

    index: int
    name: str
    values: dict[str, Any]
    """This point's grid values (what its name says)."""
    overrides: list[str]
    """`--set` assignments on the base recipe, in order: set, grid, command line, run.name."""
    recipe: Recipe
    role: str = "point"
    """point, or requires (a prerequisite recipe, trained as written)."""
    source: Path | None = None
    """The recipe file the overrides apply to."""

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir


@dataclass
class Sweep:
    """An expanded, validated ablation file."""

    path: Path
    name: str
    base: Path
    spec: AblationFile
    grids: list[dict[str, list]]
    points: list[Point]
    requires: list[Point] = field(default_factory=list)
    eval_args: list[str] | None = None

    @property
    def folder(self) -> Path:
        return Path(self.points[0].recipe.run.output_dir) / "sweeps" / self.name

    def keys(self) -> list[str]:
        """Grid keys in first-seen order (the report's columns)."""
        return list(dict.fromkeys(k for g in self.grids for k in g))


# ------------------------------------------------------------------------------ validation
def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{a: {b: 1}, c.d: 2} -> {a.b: 1, c.d: 2} (nested mappings merge, like `base:`)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def _check_key(path: Path, where: str, key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise UserError(f"{path}: {where} key {key!r} must be a dotted recipe key such as align.alpha")
    if key == "run.name" or key == "run":
        raise UserError(f"{path}: {where} key '{key}': run names are made by the sweep (<name>-<values>); "
                        f"use the ablation's `name:`")
    problem = schema_problem(key)
    if problem:
        raise UserError(f"{path}: {where} key '{key}': {problem}")


def _grids(path: Path, raw: Any) -> list[dict[str, list]]:
    grids = raw if isinstance(raw, list) else [raw]
    if raw is None or not grids:
        raise UserError(f"{path}: `grid` is missing or empty; give {{dotted.key: [value, ...]}}")
    for g in grids:
        if not isinstance(g, dict) or not g:
            raise UserError(f"{path}: grid: expected a non-empty mapping of dotted.key: [values], got {g!r}")
        for key, values in g.items():
            _check_key(path, "grid", key)
            if not isinstance(values, list) or not values:
                raise UserError(f"{path}: grid key '{key}': expected a non-empty list of values, got {values!r}")
    return grids


def yaml_value(value: Any) -> str:
    """A value as `--set` text that parses back to the same value."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip().removesuffix("...").strip()


def _value_text(value: Any) -> str:
    if value is None or isinstance(value, bool):
        text = {None: "none", True: "true", False: "false"}[value]
    else:
        text = str(value) if isinstance(value, (int, float, str)) else yaml_value(value)
    text = _UNSAFE.sub("_", text).strip("_") or "empty"
    # long values (lists, mappings) keep a readable start and a stable hash of the whole
    return text if len(text) <= 40 else text[:32] + "_" + hashlib.sha1(text.encode()).hexdigest()[:6]


def label(values: dict[str, Any], keys: list[str]) -> str:
    """`alpha0.1-rope.type-yarn`: each grid key without its section (the full key when two keys
    share a tail), numbers glued to the key, other values after a dash."""
    tails = {k: k.split(".", 1)[-1] for k in keys}
    clash = {t for t in tails.values() if list(tails.values()).count(t) > 1}
    parts = []
    for key, value in values.items():
        short = key if tails[key] in clash else tails[key]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        parts.append(f"{short}{_value_text(value)}" if numeric else f"{short}-{_value_text(value)}")
    return "-".join(parts)


def _eval_args(path: Path, raw) -> list[str] | None:
    if raw is None or raw is False:
        return None
    args = [] if raw is True else shlex.split(raw) if isinstance(raw, str) else [str(a) for a in raw]
    bad = [a for a in args if a.split("=")[0] in ("--out", "--compare")]
    if bad:
        raise UserError(f"{path}: eval: {bad[0]} is not allowed (each run's report goes to runs/<name>/eval)")
    return args


def _resolve(path: Path, recipe_path: Path, overrides: list[str], what: str) -> Recipe:
    try:
        return load_recipe(recipe_path, overrides)
    except UserError as e:
        raise UserError(f"{path}: {what}: {e}") from None


def load_sweep(path: str | Path, cli_overrides: list[str] = ()) -> Sweep:
    """Read, expand and validate an ablation file; raises UserError (one line) on any problem."""
    path = recipe_path(path)  # a file, or a shipped ablation by name
    raw = read_yaml(path)
    try:
        spec = AblationFile.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(file)"
        loc = "set" if loc.startswith("fixed") else loc
        if first["type"] == "extra_forbidden":
            raise UserError(f"{path}: unknown key '{loc}' (known: base, name, description, grid, set, requires, "
                            f"eval, slurm)") from None
        raise UserError(f"{path}: {loc}: {first['msg']}") from None
    name = spec.name or path.stem
    if not re.match(NAME_RE, name):
        raise UserError(f"{path}: sweep name {name!r} must be letters, digits, '.', '_', '+', '-'")
    base = Path(os.path.normpath(path.parent / spec.base))
    if not base.is_file():
        raise UserError(f"{path}: base recipe '{spec.base}' not found (looked at {base})")
    grids = _grids(path, spec.grid)
    for key, value in spec.slurm.items():
        if not re.match(r"^[a-z][a-z0-9-]*$", key) or "\n" in str(value):
            raise UserError(f"{path}: slurm: '{key}: {value}' is not an sbatch option such as time: '24:00:00'")
    fixed = flatten(spec.fixed)
    for key in fixed:
        _check_key(path, "set", key)
    grid_keys = {k for g in grids for k in g}
    for assignment in cli_overrides:
        key = assignment.partition("=")[0]
        if key in grid_keys or key == "run.name":
            raise UserError(f"--set {key}: the sweep sets this key per point; change the ablation file instead")
    all_keys = list(dict.fromkeys(k for g in grids for k in g))
    points: list[Point] = []
    seen: dict[str, int] = {}
    for g in grids:
        for combo in itertools.product(*g.values()):
            values = dict(zip(g, combo))
            run_name = f"{name}-{label(values, all_keys)}"
            if run_name in seen:
                raise UserError(f"{path}: points {seen[run_name]} and {len(points)} both get run name {run_name!r} "
                                f"(repeated grid values?)")
            seen[run_name] = len(points)
            # a grid value replaces the same key of `set:` in place (one --set per key)
            assign = {**{k: v for k, v in fixed.items() if k not in values}, **values}
            overrides = [*(f"{k}={yaml_value(v)}" for k, v in assign.items()), *cli_overrides, f"run.name={run_name}"]
            recipe = _resolve(path, base, overrides, f"point {run_name}")
            points.append(Point(len(points), run_name, values, overrides, recipe, source=base))
    requires = []
    for i, rel in enumerate(spec.requires):
        req = Path(os.path.normpath(path.parent / rel))
        if not req.is_file():
            raise UserError(f"{path}: requires: recipe '{rel}' not found (looked at {req})")
        recipe = _resolve(path, req, [], f"requires '{rel}'")
        requires.append(Point(i, recipe.run.name, {}, [], recipe, role="requires", source=req))
    return Sweep(path, name, base, spec, grids, points, requires, _eval_args(path, spec.eval))
