"""`lsa recipes`: list the shipped recipes, or copy one to edit (as torchtune's `tune ls` / `tune cp`).

    lsa recipes                                  name and first comment line of every shipped recipe
    lsa recipes copy llama2-7b-4k-to-8k my.yaml  a copy to edit; `lsa train my.yaml` then runs it

A copy of a recipe that inherits (`base:`) is written with its base merged in, so it stands alone
wherever it is put. An existing destination is never overwritten.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

from lsa_ds.cli_help import command_parser
from lsa_ds.errors import UserError
from lsa_ds.recipe.files import load_tree, read_yaml
from lsa_ds.recipe.shipped import description, shipped_recipe, shipped_recipes


def copy_recipe(name: str, dest: Path) -> Path:
    """Copy the shipped recipe `name` to `dest` (a file, or a folder to put `<name>.yaml` in)."""
    source = shipped_recipe(name)
    if source is None:
        raise UserError(f"lsa recipes copy {name}: no shipped recipe of that name (`lsa recipes` lists them)")
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        raise UserError(f"{dest}: already exists; pick another name or move it away (nothing was written)")
    if not dest.parent.is_dir():
        raise UserError(f"{dest}: folder {dest.parent} does not exist")
    if "base" in read_yaml(source):
        header = f"# Copied from the shipped recipe {name} with its base: chain merged in (`lsa recipes copy`).\n"
        dest.write_text(header + yaml.safe_dump(load_tree(source), sort_keys=False))
    else:
        shutil.copyfile(source, dest)
    return dest


def main(argv: list[str]) -> int:
    p = command_parser("recipes", __doc__.split("\n\n")[0])
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    p.add_argument("action", nargs="?", choices=["list", "copy"], default="list")
    p.add_argument("name", nargs="?", help="shipped recipe to copy")
    p.add_argument("dest", nargs="?", type=Path, help="file (or folder) to copy it to")
    args = p.parse_args(argv)
    if args.action == "copy":
        if not args.name or not args.dest:
            p.error("copy needs NAME and DEST, e.g. `lsa recipes copy llama2-7b-4k-to-8k my.yaml`")
        print(f"copied {args.name} to {copy_recipe(args.name, args.dest)}")
        return 0
    recipes = shipped_recipes()
    width = max(map(len, recipes))
    for title, names in (("recipes (lsa train NAME)", [n for n in recipes if not n.startswith("ablations/")]),
                         ("ablation files (lsa sweep NAME)", [n for n in recipes if n.startswith("ablations/")])):
        print(title)
        for name in sorted(names, key=lambda n: (n.count("/"), n)):
            print(f"  {name:<{width}}  {description(recipes[name])}")
    print("\n`lsa recipes copy NAME FILE` makes a copy to edit.", file=sys.stderr)
    return 0
