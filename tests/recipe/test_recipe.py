"""Recipe loading: strict YAML, inheritance, overrides, errors that name the key, generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsa_ds.errors import UserError
from lsa_ds.recipe import load_recipe, recipe_changes, recipe_to_dict
from lsa_ds.recipe.reference import render

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_base_inheritance_deep_merges_and_overrides_coerce(tmp_path):
    write(tmp_path / "base.yaml", "train: {seq_len: 256, max_steps: 10}\nalign: {alpha: 0.3}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\ntrain: {max_steps: 20}\n")
    r = load_recipe(child, ["align.positions=last", "train.micro_batch_size=4", "optim.betas=[0.9, 0.99]"])
    assert (r.train.seq_len, r.train.max_steps, r.align.alpha) == (256, 20, 0.3)
    assert r.align.positions == "last" and r.train.micro_batch_size == 4 and r.optim.betas == (0.9, 0.99)
    assert r.window_tokens == 256 + 128 + 1


@pytest.mark.parametrize("text, overrides, expect", [
    ("train: {seq_len: 64}\ntrain: {seq_len: 32}\n", [], "duplicate key 'train'"),
    ("train: {sequence_length: 64}\n", [], "unknown key 'train.sequence_length'"),
    ("train: {seq_len: long}\n", [], "train.seq_len"),
    ("align: {positions: middle}\n", [], "align.positions"),
    ("base: nowhere.yaml\n", [], "base recipe 'nowhere.yaml' not found"),
    ("train: [1, 2\n", [], "invalid YAML"),
    ("- just a list\n", [], "must be a mapping"),
    ("{}\n", ["train.seq_len"], "expected KEY=VALUE"),
    ("{}\n", ["align.shift_max=200"], "align.shift_max=200 must be at most train.seq_len - 1"),
    ("{}\n", ["train.seq_len=3", "train.seq_len.x=1"], "--set train.seq_len.x: 'train.seq_len' is a value, not a section"),
    # errors point at what the user typed, with the closest key
    ("train: {max_steps: 3}\n", ["align.alhpa=1"], "--set align.alhpa: unknown key 'align.alhpa' (did you mean `align.alpha`?)"),
    ("{}\n", ["trian.max_steps=1"], "--set trian.max_steps: unknown key 'trian.max_steps' (did you mean `train.max_steps`?)"),
    ("align: {alhpa: 1}\n", [], "r.yaml: unknown key 'align.alhpa' (did you mean `align.alpha`?)"),
    ("data: {sources: [{name: s, type: stdlib, holdot: 0.1}]}\n", [], "unknown key 'data.sources.0.holdot' (did you mean `data.sources.holdout`?)"),
    ("{}\n", ["train.max_steps=many"], "--set train.max_steps: train.max_steps"),
    ("{}\n", ["data.sources=[{name: s, type: stdlib, nmae: 1}]"], "--set data.sources: unknown key 'data.sources.0.nmae'"),
])
def test_bad_recipes_name_the_file_and_key(tmp_path, text, overrides, expect):
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(UserError) as e:
        load_recipe(path, overrides)
    assert expect in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides, inert", [
    (["align.enabled=false", "align.alpha=0.3"], ["align.alpha (align.enabled is false)"]),
    (["align.enabled=false", "align.divergence=skl", "align.shift_max=16"], ["align.divergence"]),
    (["align.alpha=0", "align.detach=long"], ["align.detach (align.alpha is 0"]),
    (["align.min_ratio=0.7"], ["align.min_ratio (align.positions is overlap"]),
    (["train.max_steps=5", "train.token_budget=1000"], ["train.token_budget"]),
    (["align.enabled=false"], []),
    (["align.alpha=0.3", "align.positions=ratio", "align.min_ratio=0.7", "align.shift_max=16"], []),
])
def test_keys_set_without_effect_warn_and_strict_refuses(tmp_path, capsys, overrides, inert):
    from lsa_ds import cli

    path = write(tmp_path / "r.yaml", f"run: {{output_dir: '{tmp_path / 'runs'}'}}\ntrain: {{max_steps: 2}}\n")
    args = [a for o in overrides for a in ("--set", o)]
    assert cli.main(["train", str(path), *args, "--dry-run", "--nproc", "1"]) == 0
    err = capsys.readouterr().err.strip()
    if not inert:
        assert "warning" not in err
        return
    assert err.count("\n") == 0 and err.startswith("warning:") and all(i in err for i in inert), err
    assert cli.main(["train", str(path), *args, "--dry-run", "--nproc", "1", "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "(--strict)" in err and "\n" not in err and all(i in err for i in inert)
    assert not (tmp_path / "runs").exists()


def test_base_cycle_is_refused(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


SHIPPED = {  # run name, L, window L + E_max + 1, alignment on, alpha, RoPE type and factor, precision, LoRA rank, steps
    "gpu/study-base.yaml": ("gpu-study-base", 512, 769, False, 0.1, "none", None, "bf16", 0, 1200),
    "gpu/study-extend.yaml": ("gpu-study-extend", 2048, 3073, False, 0.1, "linear", 4.0, "bf16", 0, 150),
    "llama2-7b-4k-to-8k.yaml": ("llama2-7b-4k-to-8k", 8192, 12289, True, 0.1, "linear", 2.0, "bf16", 0, 1000),
    "llama2-7b-longlora-8k.yaml": ("llama2-7b-longlora-8k", 8192, 12289, True, 0.1, "linear", 2.0, "bf16", 8, 1000),
    "tiny-cpu-extend-alpha0.yaml": ("tiny-cpu-extended-alpha0", 512, 769, True, 0.0, "linear", 4.0, "fp32", 0, 300),
    "tiny-cpu-extend-lsa.yaml": ("tiny-cpu-extended-lsa", 512, 769, True, 0.1, "linear", 4.0, "fp32", 0, 300),
    "tiny-cpu-extend.yaml": ("tiny-cpu-extended", 512, 769, False, 0.1, "linear", 4.0, "fp32", 0, 300),
    "tiny-cpu-more.yaml": ("tiny-cpu-more-steps", 128, 193, False, 0.1, "none", None, "fp32", 0, 300),
    "tiny-cpu.yaml": ("tiny-cpu-base", 128, 193, False, 0.1, "none", None, "fp32", 0, 6000),
}


def test_shipped_recipes_resolve_to_what_they_say():
    # recipes/ablations/ holds sweep files, not recipes: tests/sweep/test_sweep.py resolves every point
    found = sorted(str(p.relative_to(ROOT / "recipes")) for p in (ROOT / "recipes").rglob("*.yaml")
                   if "ablations" not in p.parts)
    assert found == sorted(SHIPPED)
    for name, want in SHIPPED.items():
        r = load_recipe(ROOT / "recipes" / name)
        got = (r.run.name, r.train.seq_len, r.window_tokens, r.align.enabled, r.align.alpha, r.model.rope.type,
               r.model.rope.factor, r.train.precision, r.model.lora.r, r.train.max_steps)
        assert got == want, name
        assert r.window_tokens == r.train.seq_len + r.shift_max + 1 and r.shift_max == r.train.seq_len // 2, name
    # the demo's stage-2 arms differ from the baseline only where their names say
    base = recipe_to_dict(load_recipe(ROOT / "recipes" / "tiny-cpu-extend.yaml"))
    for arm, keys in (("tiny-cpu-extend-lsa.yaml", {"run.name", "align.enabled"}),
                      ("tiny-cpu-extend-alpha0.yaml", {"run.name", "align.enabled", "align.alpha"})):
        assert {c.key for c in recipe_changes(base, load_recipe(ROOT / "recipes" / arm))} == keys, arm


def test_every_field_is_documented_and_the_reference_is_current():
    text = render()
    assert "|  |" not in text.replace("| *required* |", "")  # no field without a docstring
    assert (ROOT / "docs" / "recipe-reference.md").read_text() == text, "run: lsa config-doc > docs/recipe-reference.md"


@pytest.mark.parametrize("command", ["train", "demo", "export", "prepare", "data", "eval", "sweep", "synth", "config-doc"])
def test_help_prints_each_default_once_and_says_what_is_written(command, capsys):
    import re

    from lsa_ds import cli

    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    options = re.split(r"\n  (?=-)", text.split("\nwrites: ")[0])  # one chunk per option
    for chunk in options:
        flat = " ".join(chunk.split()).lower()
        assert flat.count("default") <= 1 or flat.count("(default:") == 0, chunk
        assert "(default: none)" not in flat and "(default: [])" not in flat and "(default: false)" not in flat, chunk
    assert "writes: " in text
    assert cli.main(["--help"]) == 0 and "writes: " in capsys.readouterr().out


def test_recipe_changes_lists_every_changed_key_in_schema_order(tmp_path):
    saved = recipe_to_dict(load_recipe(None, ["train.max_steps=20"]))
    new = load_recipe(None, ["train.max_steps=30", "align.alpha=0.5", "model.rope.type=linear"])
    changes = recipe_changes(saved, new)
    assert [(c.key, c.old, c.new) for c in changes] == [
        ("model.rope.type", "none", "linear"), ("train.max_steps", 20, 30), ("align.alpha", 0.1, 0.5)]
    assert str(changes[2]) == "align.alpha: 0.1 -> 0.5"
    assert [c.key for c in recipe_changes(saved, new, keys=("model", "data"))] == ["model.rope.type"]
    assert recipe_changes(load_recipe(None, ["train.max_steps=20"]), load_recipe(None, ["train.max_steps=20"])) == []
