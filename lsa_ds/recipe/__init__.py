"""The recipe: what a run is, as one validated pydantic object.

    schema      the sections and every field, documented where declared (`lsa config-doc`)
    files       strict YAML, `base:` inheritance, `--set` overrides, as plain data
    checks      which keys exist (did-you-mean), which keys the user set do nothing
    load        files + `--set` -> Recipe; the RECIPE/--set/--strict arguments; saved vs new recipe
    ds_config   a DeepSpeed JSON template resolved against the recipe
    reference   `lsa config-doc`: the Markdown reference generated from the schema

Everything a recipe-driven command needs is importable from here; nothing here imports torch.
"""

from lsa_ds.recipe.load import (
           Change,
           add_recipe_args,
           load_recipe,
           recipe_changes,
           recipe_from_args,
)
from lsa_ds.recipe.schema import Recipe, recipe_to_dict

__all__ = ["Change", "Recipe", "add_recipe_args", "load_recipe", "recipe_changes", "recipe_from_args",
           "recipe_to_dict"]
