"""DeepSpeed config resolution: "auto" filled from the recipe, contradictions refused, and the
result accepted by DeepSpeed's own config parser with clipping and overflow checks on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsa_ds.errors import UserError
from lsa_ds.recipe import load_recipe
from lsa_ds.recipe.ds_config import DS_CONFIG_DIR, load_template, resolve_ds_config, template_path, zero_stage

TEMPLATES = {"zero3": 3, "zero3_offload": 3, "zero2": 2}
BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def recipe(*sets: str):
    return load_recipe(None, list(sets))


def offload_ok(name: str) -> list[str]:
    """zero3_offload needs DeepSpeed's CPU Adam (see test_offload_needs_deepspeed_adam)."""
    return ["optim.impl=deepspeed"] if name == "zero3_offload" else []


def write(tmp_path: Path, data: dict | str, name: str = "custom.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return str(path)


# ------------------------------------------------------------------------------- templates
def test_builtin_templates_exist_and_leave_batch_and_precision_to_the_recipe():
    assert {p.stem for p in DS_CONFIG_DIR.glob("*.json")} >= set(TEMPLATES)
    for name, stage in TEMPLATES.items():
        data, path = load_template(name)
        assert path == DS_CONFIG_DIR / f"{name}.json"
        assert zero_stage(data) == stage
        assert all(data[k] == "auto" for k in (*BATCH_KEYS, "gradient_clipping"))
        assert data["bf16"]["enabled"] == "auto" and data["fp16"]["enabled"] == "auto"
        assert "optimizer" not in data and "scheduler" not in data  # the engine owns both
        assert data["wall_clock_breakdown"] is False and data["steps_per_print"] >= 10**6
    z3 = load_template("zero3")[0]["zero_optimization"]
    assert z3["stage3_gather_16bit_weights_on_model_save"] is True and z3["overlap_comm"] is True
    off = load_template("zero3_offload")[0]["zero_optimization"]
    assert off["offload_optimizer"]["device"] == "cpu" and off["offload_param"]["device"] == "cpu"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("world", [1, 2, 8])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_auto_fields_filled_from_recipe(name, world, precision):
    r = recipe(f"train.ds_config={name}", "train.micro_batch_size=2", "train.grad_accum=3",
               f"train.precision={precision}", "train.grad_clip=0.5", *offload_ok(name))
    ds = resolve_ds_config(r, world)
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 2 * 3 * world
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is (precision == "bf16")
    assert ds["fp16"]["enabled"] is (precision == "fp16")
    assert ds["bf16"]["check_grad_overflow"] is True
    assert ds["fp16"]["loss_scale"] == 0  # dynamic scaling: overflowing steps are skipped and rescaled
    assert zero_stage(ds) == TEMPLATES[name]
    assert "auto" not in json.dumps(ds)
    # The template on disk is untouched (resolution works on a copy).
    assert load_template(name)[0]["train_batch_size"] == "auto"


def test_absent_keys_are_added_and_other_sections_left_alone(tmp_path):
    user = {"zero_optimization": {"stage": 1}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}
    ds = resolve_ds_config(recipe(f"train.ds_config={write(tmp_path, user)}", "train.grad_accum=2"), 4)
    assert ds["train_batch_size"] == 8 and ds["gradient_clipping"] == 1.0
    assert ds["bf16"] == {"enabled": False, "check_grad_overflow": True}
    assert ds["optimizer"] == user["optimizer"]  # not ours to fight over
    assert zero_stage(ds) == 1 and zero_stage({}) == 0 and zero_stage(None) == 0


def test_matching_literals_are_accepted(tmp_path):
    user = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "train_batch_size": 8,
            "gradient_clipping": 1, "bf16": {"enabled": True}, "fp16": {"enabled": False}}
    r = recipe(f"train.ds_config={write(tmp_path, user)}", "train.micro_batch_size=2", "train.grad_accum=2",
               "train.precision=bf16")
    ds = resolve_ds_config(r, 2)
    assert ds["train_batch_size"] == 8 and ds["gradient_clipping"] == 1.0 and ds["bf16"]["enabled"] is True


# ---------------------------------------------------------------------------- contradictions
@pytest.mark.parametrize(
    "literal, sets, words",
    [
        ({"train_batch_size": 64}, ["train.micro_batch_size=2", "train.grad_accum=2"], ["train_batch_size=64", "8"]),
        ({"train_micro_batch_size_per_gpu": 4}, ["train.micro_batch_size=2"], ["train_micro_batch_size_per_gpu=4", "2"]),
        ({"gradient_accumulation_steps": 4}, [], ["gradient_accumulation_steps=4", "train.grad_accum"]),
        ({"gradient_clipping": 0.0}, ["train.grad_clip=1.0"], ["gradient_clipping=0.0", "train.grad_clip"]),
        ({"bf16": {"enabled": True}}, ["train.precision=fp32"], ["bf16.enabled=True", "train.precision=fp32"]),
        ({"fp16": {"enabled": False}}, ["train.precision=fp16"], ["fp16.enabled=False", "train.precision=fp16"]),
    ],
)
def test_literal_contradicting_recipe_is_refused(tmp_path, literal, sets, words):
    path = write(tmp_path, {"zero_optimization": {"stage": 3}, **literal})
    with pytest.raises(UserError) as err:
        resolve_ds_config(recipe(f"train.ds_config={path}", *sets), 2)
    msg = str(err.value)
    assert path in msg and "\n" not in msg
    for word in words:
        assert word in msg


def test_missing_template_names_it():
    with pytest.raises(UserError, match="train.ds_config='zero9'.*not found"):
        resolve_ds_config(recipe("train.ds_config=zero9"), 1)
    with pytest.raises(UserError, match="nope.json"):
        resolve_ds_config(recipe("train.ds_config=/nonexistent/nope.json"), 1)


def test_invalid_json_reports_file_and_line(tmp_path):
    path = write(tmp_path, '{\n  "train_batch_size": "auto",\n  "bf16": {enabled: true}\n}\n')
    with pytest.raises(UserError, match=rf"{path}:3: invalid JSON"):
        resolve_ds_config(recipe(f"train.ds_config={path}"), 1)
    with pytest.raises(UserError, match="must be a JSON object"):
        resolve_ds_config(recipe(f"train.ds_config={write(tmp_path, '[1, 2]', 'list.json')}"), 1)


def test_unfillable_auto_and_bad_stage_are_refused(tmp_path):
    path = write(tmp_path, {"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}})
    with pytest.raises(UserError, match="'zero_optimization.reduce_bucket_size' is \"auto\""):
        resolve_ds_config(recipe(f"train.ds_config={path}"), 1)
    path = write(tmp_path, {"zero_optimization": {"stage": 4}}, "stage.json")
    with pytest.raises(UserError, match="zero_optimization.stage=4"):
        resolve_ds_config(recipe(f"train.ds_config={path}"), 1)


def test_offload_needs_deepspeed_adam():
    with pytest.raises(UserError, match="offload_optimizer.*optim.impl=deepspeed"):
        resolve_ds_config(recipe("train.ds_config=zero3_offload", "optim.impl=torch"), 1)
    assert zero_stage(resolve_ds_config(recipe("train.ds_config=zero3_offload", "optim.impl=deepspeed"), 1)) == 3


def test_template_path_rules():
    assert template_path("zero3") == DS_CONFIG_DIR / "zero3.json"
    assert template_path("conf/my.json") == Path("conf/my.json")
    with pytest.raises(ValueError):
        resolve_ds_config(recipe(), 0)


# ------------------------------------------------------------------ DeepSpeed accepts the result
class _DataParallelOnly:
    """The smallest mpu DeepSpeedConfig consults for the data-parallel world size."""

    def __init__(self, world: int):
        self.world = world

    def get_data_parallel_world_size(self) -> int:
        return self.world


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("world, precision", [(1, "bf16"), (2, "fp16"), (4, "fp32")])
def test_deepspeed_parses_resolved_config(monkeypatch, name, world, precision):
    deepspeed = pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    # Without an initialised process group DeepSpeedConfig assumes world size 1; pretend rank 0 of
    # `world` so its own train_batch = micro × accum × world assertion really runs.
    monkeypatch.setattr(deepspeed.comm, "get_rank", lambda *a, **k: 0)
    r = recipe(f"train.ds_config={name}", "train.micro_batch_size=3", "train.grad_accum=2",
               f"train.precision={precision}", "train.grad_clip=0.7", *offload_ok(name))
    ds = resolve_ds_config(r, world)
    parsed = DeepSpeedConfig(ds, mpu=_DataParallelOnly(world))

    assert parsed.world_size == world
    assert (parsed.train_batch_size, parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (
        3 * 2 * world, 3, 2)
    assert parsed.gradient_clipping == pytest.approx(0.7)
    assert parsed.bfloat16_config.enabled is (precision == "bf16")
    assert parsed.float16_config.enabled is (precision == "fp16")
    assert parsed.bfloat16_config.check_grad_overflow is True  # the key DeepSpeed 0.19.8 reads
    assert parsed.float16_config.loss_scale == 0  # dynamic: fp16 overflow skips and rescales
    assert parsed.zero_optimization_stage == TEMPLATES[name]
    if name == "zero3":
        assert parsed.zero_config.gather_16bit_weights_on_model_save is True
    if name == "zero3_offload":
        assert parsed.zero_config.offload_optimizer.device == "cpu"
        assert parsed.zero_config.offload_param.device == "cpu"
