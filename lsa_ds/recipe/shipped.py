"""What the package ships besides code, found through `importlib.resources` wherever it is
installed (an editable checkout, a wheel, a container): the shipped recipes, the DeepSpeed
templates and the demo's committed base model, under `lsa_ds/assets/`.

In a checkout the same folders are visible at the repository root as symbolic links
(`recipes -> lsa_ds/assets/recipes`, `ds_configs -> ...`, `demo -> ...`): one copy, read from both
places.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

ASSETS = Path(str(files("lsa_ds") / "assets"))
RECIPES = ASSETS / "recipes"
"""Shipped recipes (`lsa recipes` lists them); ablation files under `ablations/`."""
DS_CONFIGS = ASSETS / "ds_configs"
"""DeepSpeed templates a recipe names in `train.ds_config` (zero3, zero3_offload, zero2)."""
DEMO_BASE = ASSETS / "demo" / "tiny-cpu-base"
"""The demo's committed stage-1 run (recipe, log, curves, hf/ export)."""


def shipped_recipes() -> dict[str, Path]:
    """{name: file} of every shipped recipe and ablation file; the name is the path below
    recipes/ without `.yaml` (`tiny-cpu-extend`, `gpu/study-base`, `ablations/cpu-study`)."""
    return {str(p.relative_to(RECIPES).with_suffix("")): p for p in sorted(RECIPES.rglob("*.yaml"))}


def shipped_recipe(name: str) -> Path | None:
    """The shipped file a name means (with or without `.yaml`, with or without a leading
    `recipes/`), or None."""
    key = name.removeprefix("recipes/").removesuffix(".yaml")
    return shipped_recipes().get(key)


def description(path: Path, width: int = 100) -> str:
    """The first sentence of a recipe's opening comment (cut to `width` characters): what it is,
    in its own words."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        words += line.lstrip("#").split()
    text = " ".join(words)
    sentence = text.split(". ")[0].split(": ")[0]
    return sentence if len(sentence) <= width else sentence[:width - 1].rstrip() + "…"
