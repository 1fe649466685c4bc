"""Recipe loading: strict YAML, inheritance, overrides, errors that name the key, generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsa_ds.config import load_recipe
from lsa_ds.config_doc import render
from lsa_ds.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


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
    ("{}\n", ["train.seq_len=3", "train.seq_len.x=1"], "'seq_len' is not a section"),
])
def test_bad_recipes_name_the_file_and_key(tmp_path, text, overrides, expect):
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(UserError) as e:
        load_recipe(path, overrides)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_base_cycle_is_refused(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_shipped_recipes_load():
    # recipes/ablations/ holds sweep files, not recipes: tests/test_sweep.py resolves every point
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(recipes) >= 3
    for path in recipes:
        load_recipe(path)


def test_every_field_is_documented_and_the_reference_is_current():
    text = render()
    assert "|  |" not in text.replace("| *required* |", "")  # no field without a docstring
    assert (ROOT / "docs" / "recipe-reference.md").read_text() == text, "run: lsa config-doc > docs/recipe-reference.md"
