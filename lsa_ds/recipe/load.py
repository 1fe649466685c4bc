"""From what the user typed to a validated `Recipe`: a file with its `base:` chain, `--set`
overrides, the schema's checks; and the comparison of a run's saved recipe with a new one.

This module joins the pieces that do not know each other: `files` (YAML as plain data),
`schema` (the pydantic model) and `checks` (key names, inert keys). Nothing here has side effects
beyond reading files; every problem is one `UserError` line naming the file or `--set` and the key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from lsa_ds.errors import UserError
from lsa_ds.recipe.checks import (
    inert_keys,
    inert_message,
    schema_problem,
    validation_message,
)
from lsa_ds.recipe.files import apply_override, differences, load_tree
from lsa_ds.recipe.schema import Recipe, recipe_to_dict
from lsa_ds.recipe.shipped import shipped_recipe


def recipe_path(name: str | Path) -> Path:
    """The file a RECIPE argument names: a file, else a shipped recipe of that name (`lsa recipes`)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_recipe(str(name))
    if shipped is None:
        raise UserError(f"{path}: recipe file not found, and no shipped recipe has that name (`lsa recipes` lists them)")
    return shipped


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Load a recipe file or shipped recipe (or the defaults when `path` is None), apply `--set`
    overrides, validate."""
    path = recipe_path(path) if path else None
    source = str(path) if path else "(defaults)"
    tree = load_tree(path) if path else {}
    for assignment in overrides:
        key = assignment.partition("=")[0]
        problem = schema_problem(key, what="key") if key else None  # worded as a file's unknown key
        if problem:  # refused as what the user typed, before it can be blamed on the file
            raise UserError(f"--set {key}: {problem}")
        apply_override(tree, assignment)
    try:
        return Recipe.model_validate(tree)
    except ValidationError as e:
        raise UserError(validation_message(e, source, list(overrides))) from None


# ------------------------------------------------------------------ the command line
def add_recipe_args(parser) -> None:
    """The RECIPE positional, repeated `--set KEY=VALUE` and `--strict` every recipe-driven command takes."""
    parser.add_argument("recipe", help="recipe YAML file, or the name of a shipped recipe (`lsa recipes`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set train.max_steps=20 (repeatable)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse keys that are set but have no effect (by default: one warning line)")


def recipe_from_args(args, warn: bool = True) -> Recipe:
    """The recipe a command line names. Keys set without effect get one warning line (`warn`),
    or an error with `--strict`."""
    recipe = load_recipe(args.recipe, args.overrides)
    inert = inert_keys(recipe) if (warn or args.strict) else []
    if inert and args.strict:
        raise UserError(f"{args.recipe}: {inert_message(inert)} (--strict)")
    if inert:
        print(f"warning: {args.recipe}: {inert_message(inert)}", file=sys.stderr)
    return recipe


# ------------------------------------------------------------ a saved recipe against a new one
class Change(NamedTuple):
    """One recipe key whose value differs between a run's saved recipe and a new one."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {json.dumps(self.old, default=str)} -> {json.dumps(self.new, default=str)}"


def recipe_changes(saved: Recipe | dict, recipe: Recipe, keys: tuple[str, ...] | None = None) -> list[Change]:
    """Every dotted key where `recipe` differs from `saved` (a run's config.yaml as data, or a
    loaded Recipe), in schema order; only keys under `keys` when given. The one decision "was this
    run made from this recipe" that resume, the demo's finished stages and a sweep's finished
    points all take."""
    old = recipe_to_dict(saved) if isinstance(saved, Recipe) else saved
    found = [Change(*d) for d in differences(old, recipe_to_dict(recipe))]
    if keys is None:
        return found
    return [c for c in found if any(c.key == k or c.key.startswith(k + ".") for k in keys)]
