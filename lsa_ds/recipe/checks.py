"""What a recipe's keys mean beyond their types: which dotted keys exist (with a "did you mean"
for a typo), and which keys the user set that do nothing under the resolved recipe.

Used by the loader (`lsa_ds.recipe.load`: unknown keys in files and `--set`, `--strict`) and by
sweep files (grid and `set:` keys). Pure functions of the schema: nothing here reads a file.
"""

from __future__ import annotations

import difflib
from functools import cache
from typing import get_args, get_origin

from pydantic import BaseModel, ValidationError

from lsa_ds.recipe.schema import Recipe


def section_model(annotation) -> type[BaseModel] | None:
    """The pydantic section a field holds (directly, in a list, or optional), or None for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        sub = section_model(arg)
        if sub is not None:
            return sub
    return None


@cache
def recipe_keys() -> tuple[str, ...]:
    """Every dotted recipe key (list-of-section fields such as data.sources count as sections)."""
    out: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            sub = section_model(field.annotation)
            if sub is None:
                out.append(prefix + name)
            else:
                walk(sub, f"{prefix}{name}.")

    walk(Recipe, "")
    return tuple(out)


def did_you_mean(key: str) -> str:
    """' (did you mean `align.alpha`?)' for the closest recipe key, or '' when none is close.
    List indices in a location (data.sources.0.nmae) are ignored."""
    plain = ".".join(p for p in key.split(".") if not p.isdigit())
    close = difflib.get_close_matches(plain, recipe_keys(), n=1, cutoff=0.75)
    if not close:  # a typo in the last part only: compare it with the keys of its own section
        head, _, last = plain.rpartition(".")
        siblings = {k.rpartition(".")[2]: k for k in recipe_keys() if k.rpartition(".")[0] == head}
        best = difflib.get_close_matches(last, siblings, n=1, cutoff=0.6)
        close = [siblings[best[0]]] if best else []
    return f" (did you mean `{close[0]}`?)" if close else ""


def schema_problem(key: str, what: str = "recipe key") -> str | None:
    """Why `key` is not a recipe key (None when it is), calling an unknown one an unknown `what`.
    Keys inside free-form mappings (model.overrides.*) are accepted; their values are checked
    when the model is built."""
    model: type[BaseModel] = Recipe
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = "'" + ".".join(parts[:i]) + "'" if i else "the recipe"
            return f"unknown {what} '{key}'{did_you_mean(key)} ({where} has: {', '.join(fields)})"
        if i == len(parts) - 1:
            return None
        annotation = fields[part].annotation
        sub = section_model(annotation)
        if sub is None or get_origin(annotation) is list:
            if get_origin(annotation) is dict:
                return None
            what = "a list (set it whole)" if get_origin(annotation) is list else "a value"
            return f"'{'.'.join(parts[:i + 1])}' is {what}, not a section"
        model = sub
    return None


def validation_message(err: ValidationError, source: str, overrides: list[str] = ()) -> str:
    """One line for the first error, attributed to the `--set` that gave the key when one did."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(recipe)"
    keys = [a.partition("=")[0] for a in overrides]
    culprit = next((k for k in reversed(keys) if loc == k or loc.startswith(k + ".")), None)
    if culprit is not None:
        source = f"--set {culprit}"
    elif keys and loc == "(recipe)":  # a check across keys: the file and the overrides together
        source = f"{source} with --set {', '.join(keys)}"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{loc}'{did_you_mean(loc)}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    if loc == "(recipe)":
        return f"{source}: {msg}{more}"
    return f"{source}: {loc}: {msg}{shown}{more}"


# ------------------------------------------------------------------------------ inert keys
def _set_keys(model: BaseModel, prefix: str = "") -> set[str]:
    """Dotted keys explicitly given (pydantic's model_fields_set), sections walked recursively."""
    out = set()
    for name in model.model_fields_set:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out |= _set_keys(value, f"{prefix}{name}.")
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            for i, item in enumerate(value):
                out |= _set_keys(item, f"{prefix}{name}.{i}.")
        else:
            out.add(prefix + name)
    return out


def inert_keys(recipe: Recipe) -> list[tuple[str, str]]:
    """(key, why) for each key the user set that has no effect under this recipe."""
    given = _set_keys(recipe)
    align, model, optim, train = recipe.align, recipe.model, recipe.optim, recipe.train
    rules: list[tuple[str, bool, str]] = []
    # With alignment off, shift_max and chunk_tokens still act (windows keep L + shift_max + 1
    # tokens in both arms; the CE is chunked alike), and shift_min, positions and min_ratio still
    # define the held-out misalignment every arm's evaluation measures.
    for key in ("alpha", "divergence", "detach", "ce_views", "every"):
        rules.append((f"align.{key}", not align.enabled, "align.enabled is false"))
    rules.append(("align.min_ratio", align.positions != "ratio", f"align.positions is {align.positions}, not ratio"))
    if align.enabled:
        for key in ("divergence", "detach", "every"):
            rules.append((f"align.{key}", align.alpha == 0, "align.alpha is 0 (no divergence term)"))
    rules.append(("model.preset", bool(model.preset and (model.path or model.init_from)),
                  "model.path or model.init_from gives the architecture; set model.preset: null"))
    for key in ("lora.alpha", "lora.dropout", "lora.target_modules", "extra_trainable"):
        rules.append((f"model.{key}", model.lora.r == 0, "model.lora.r is 0 (no adapters)"))
    rules.append(("model.s2_group_ratio", model.attn_pattern != "s2", f"model.attn_pattern is {model.attn_pattern}, not s2"))
    rules.append(("train.token_budget", train.max_steps is not None, "train.max_steps is set and wins"))
    rules.append(("optim.min_lr_ratio", optim.schedule == "constant", "optim.schedule is constant"))
    tok = recipe.data.tokenizer
    for key in ("vocab_size", "model_type", "train_chars"):
        rules.append((f"data.tokenizer.{key}", bool(tok.type == "hf" or tok.path), "an existing tokenizer is loaded"))
    for i, src in enumerate(recipe.data.sources):
        source = f"data.sources.{i}"
        rules += [(f"{source}.text_field", src.type in ("txt", "stdlib"), f"source type {src.type} has no fields"),
                  (f"{source}.format", src.type != "hf", "only type hf reads `format`"),
                  (f"{source}.split", src.type != "hf", "only type hf reads `split`"),
                  (f"{source}.exclude", src.type not in ("txt", "stdlib"), "only types txt and stdlib read `exclude`"),
                  (f"{source}.path", src.type == "stdlib", "the stdlib source has no path")]
    seen, out = set(), []
    for key, inert, why in rules:
        if inert and key in given and key not in seen:
            seen.add(key)
            out.append((key, why))
    return out


def inert_message(inert: list[tuple[str, str]]) -> str:
    """One line naming every inert key and why."""
    return "set but without effect: " + "; ".join(f"{k} ({why})" for k, why in inert)
