"""Resolve a DeepSpeed JSON template against the recipe.

Templates ship with the package (`lsa_ds/assets/ds_configs/`, `ds_configs/` in a checkout) (`zero3`, `zero3_offload`, `zero2`) or at any
JSON path the recipe names in `train.ds_config`. Batch sizes, clipping and precision are owned by
the recipe: templates say `"auto"` for them and this module fills them in. A literal that
contradicts the recipe is refused (naming file, key and both values) instead of being silently
preferred, because a run whose DeepSpeed batch differs from the recipe's trains on other data.

Safety settings are written explicitly rather than left to DeepSpeed defaults, which changed over
time (before 0.19.3 clipping and the bf16 overflow check were off):

- `gradient_clipping`: the recipe's `train.grad_clip` (0 disables).
- `bf16.check_grad_overflow`: true (the key DeepSpeed 0.19.8 reads in
  `runtime/precision_config.py`; the engine uses it for the ZeRO 1/2 and BF16 optimizers; the
  ZeRO-3 optimizer only checks overflow for fp16).
- fp16 has no switch: the engine always checks overflow in fp16 and skips the step; `loss_scale: 0`
  (dynamic loss scaling) is written so a skipped step also lowers the scale.

The result is a plain dict: the engine passes it to `deepspeed.initialize`, the model builder to
`HfDeepSpeedConfig`, and the run directory stores it as `ds_config.json`.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from lsa_ds.errors import UserError
from lsa_ds.recipe.schema import Recipe
from lsa_ds.recipe.shipped import DS_CONFIGS

DS_CONFIG_DIR = DS_CONFIGS
"""The built-in templates (shipped with the package: `lsa_ds.recipe.shipped`)."""

AUTO = "auto"

# Large enough that DeepSpeed never prints its own step lines; the trainer owns logging.
_STEPS_PER_PRINT = 1_000_000_000


def template_path(name: str) -> Path:
    """Where the template `name` lives: a bare name means `ds_configs/<name>.json`, anything with a
    `.json` suffix or a path separator is a file path."""
    if name.endswith(".json") or "/" in name or "\\" in name:
        return Path(name).expanduser()
    return DS_CONFIG_DIR / f"{name}.json"


def load_template(name: str) -> tuple[dict[str, Any], Path]:
    """Read a template as a dict; missing files and invalid JSON are `UserError`s."""
    path = template_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json"))
        raise UserError(f"train.ds_config={name!r}: DeepSpeed template not found at {path} (built-in: {', '.join(known)})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a DeepSpeed config must be a JSON object, got {type(data).__name__}")
    return data, path


def zero_stage(ds: dict[str, Any] | None) -> int:
    """The ZeRO stage of a (resolved) DeepSpeed config; 0 when there is none."""
    if not ds:
        return 0
    return int((ds.get("zero_optimization") or {}).get("stage", 0))


def resolve_ds_config(recipe: Recipe, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for `recipe` on `world_size` ranks (world / train.sequence_parallel of
    them data-parallel), every "auto" filled."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    template, path = load_template(recipe.train.ds_config)
    ds = copy.deepcopy(template)
    t = recipe.train
    sp = t.sequence_parallel
    if world_size % sp:
        raise UserError(f"train.sequence_parallel={sp}: the world size {world_size} is not divisible by it")
    dp = world_size // sp  # the ranks of one sequence-parallel group share every window

    # Batch: DeepSpeed asserts train_batch = micro × accum × data-parallel ranks, so fill all three consistently.
    _fill(ds, "train_micro_batch_size_per_gpu", t.micro_batch_size, path, "train.micro_batch_size")
    _fill(ds, "gradient_accumulation_steps", t.grad_accum, path, "train.grad_accum")
    total = t.micro_batch_size * t.grad_accum * dp
    _fill(
        ds, "train_batch_size", total, path,
        f"train.micro_batch_size × train.grad_accum × data-parallel ranks = {t.micro_batch_size} × {t.grad_accum} × {dp}",
    )
    if sp > 1:
        _sequence_parallel(ds, sp, path)
    _fill(ds, "gradient_clipping", float(t.grad_clip), path, "train.grad_clip")

    _resolve_precision(ds, recipe, path)
    _check_zero(ds, recipe, path)

    ds.setdefault("steps_per_print", _STEPS_PER_PRINT)
    ds.setdefault("wall_clock_breakdown", False)

    leftover = _find_auto(ds)
    if leftover:
        raise UserError(
            f"{path}: '{leftover}' is \"auto\", which lsa-ds cannot fill (only batch sizes, gradient_clipping "
            f"and bf16/fp16 enabled are filled from the recipe); give it a value"
        )
    return ds


# ----------------------------------------------------------------------------------- helpers
def _sequence_parallel(ds: dict, sp: int, path: Path) -> None:
    """Ulysses under ZeRO-3: zero.Init counts the batch over world / sp only when the config says
    sequence_parallel_size, and the engine's loss scaling (lsa_ds.train.sequence_parallel) relies on
    ZeRO-3's reduce-scatter averaging gradients over every rank, SP ranks included."""
    ds["sequence_parallel_size"] = sp
    zero = ds.get("zero_optimization") or {}
    if zero.get("stage") != 3:
        raise UserError(f"{path}: train.sequence_parallel={sp} needs ZeRO stage 3 (got stage {zero.get('stage', 0)})")
    if zero.get("reduce_scatter", True) is not True:
        raise UserError(f"{path}: train.sequence_parallel={sp} needs zero_optimization.reduce_scatter true "
                        f"(the gradient average the loss scaling assumes)")
    zero["reduce_scatter"] = True


def _fill(ds: dict, key: str, want: Any, path: Path, source: str, section: str | None = None) -> None:
    """Set `key` to `want` when absent or "auto"; refuse a literal that differs from it."""
    node = ds if section is None else ds[section]
    name = key if section is None else f"{section}.{key}"
    have = node.get(key, AUTO)
    if have == AUTO:
        node[key] = want
        return
    if not _same(have, want):
        raise UserError(f"{path}: {name}={have!r} contradicts the recipe ({source} gives {want!r}); set it to \"auto\"")
    node[key] = want  # normalise the type (e.g. 1 -> 1.0 for clipping)


def _same(have: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return have is want
    if isinstance(have, (int, float)) and isinstance(want, (int, float)):
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=0.0)
    return False


def _resolve_precision(ds: dict, recipe: Recipe, path: Path) -> None:
    """bf16/fp16 blocks follow train.precision; overflow handling is made explicit."""
    if "bfloat16" in ds:
        raise UserError(f"{path}: the legacy key 'bfloat16' is not supported here; rename it to 'bf16'")
    precision = recipe.train.precision
    for block in ("bf16", "fp16"):
        node = ds.setdefault(block, {})
        if not isinstance(node, dict):
            raise UserError(f"{path}: '{block}' must be an object, got {node!r}")
        _fill(ds, "enabled", precision == block, path, f"train.precision={precision}", section=block)

    # The overflow check skips a step whose gradients hold inf/NaN instead of corrupting the
    # weights. A template may still turn it off explicitly; "auto" or absent means on.
    if ds["bf16"].get("check_grad_overflow", AUTO) == AUTO:
        ds["bf16"]["check_grad_overflow"] = True
    # fp16 always checks overflow; dynamic scaling (0) lets a skipped step lower the scale.
    if ds["fp16"].get("loss_scale", AUTO) == AUTO:
        ds["fp16"]["loss_scale"] = 0


def _check_zero(ds: dict, recipe: Recipe, path: Path) -> None:
    """Validate the ZeRO block's stage and catch the offload/optimizer mismatch early."""
    zero = ds.get("zero_optimization")
    if zero is None:
        return
    if not isinstance(zero, dict):
        raise UserError(f"{path}: 'zero_optimization' must be an object, got {zero!r}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise UserError(f"{path}: zero_optimization.stage={stage!r} must be 0, 1, 2 or 3")

    # DeepSpeed refuses a client torch optimizer with optimizer offload at initialize() time,
    # after the model is built; say so up front unless the template opted out of the check.
    offload = zero.get("offload_optimizer") or {}
    offloaded = isinstance(offload, dict) and offload.get("device", "none") in ("cpu", "nvme")
    if offloaded and recipe.optim.impl != "deepspeed" and "zero_force_ds_cpu_optimizer" not in ds:
        raise UserError(
            f"{path}: zero_optimization.offload_optimizer.device={offload['device']!r} needs DeepSpeed's CPU Adam: "
            f"set optim.impl=deepspeed (or \"zero_force_ds_cpu_optimizer\": false in the template)"
        )


def _find_auto(node: Any, prefix: str = "") -> str | None:
    """Dotted path of the first "auto" value left in `node`, or None."""
    if isinstance(node, dict):
        for k, v in node.items():
            hit = _find_auto(v, f"{prefix}{k}.")
            if hit:
                return hit
    elif isinstance(node, list):
        for i, v in enumerate(node):
            hit = _find_auto(v, f"{prefix}{i}.")
            if hit:
                return hit
    elif node == AUTO:
        return prefix.rstrip(".")
    return None
