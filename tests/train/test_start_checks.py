"""One validation pass serves `--dry-run` and the real start: every recipe the real start refuses
without data, the dry run refuses with the same line, and the real start refuses it before the
corpus is tokenized (the token cache folder is never created)."""

from __future__ import annotations

import pytest

from lsa_ds import cli
from tests.launch import sets

BAD = {
    "dynamic rope": (["train.seq_len=256", "model.rope.type=dynamic"], "model.rope.type=dynamic"),
    "missing init_from": (["model.init_from=/nonexistent/run"], "model.init_from='/nonexistent/run'"),
    "flash without flash-attn": (["model.attn_impl=flash_attention_2"], "flash_attn package is not installed"),
    "unknown preset": (["model.preset=huge"], "model.preset='huge': unknown preset"),
    "bad override": (["model.overrides={hidden_sise: 64}"], "model.overrides.hidden_sise"),
    "no step budget": (["train.max_steps=null"], "train.max_steps or train.token_budget must be set"),
    "source matches nothing": (["data.sources=[{name: docs, type: txt, path: /nonexistent/*.txt}]"], "matches no files"),
    "missing tokenizer": (["data.tokenizer.path=/nonexistent/tok.model"], "data.tokenizer.path"),
    "uncached hub model": (["model.preset=null", "model.path=lsa-test/never-cached"],
                           "model.path='lsa-test/never-cached': no local folder of that name"),
    "rope factor below 1": (["model.rope.type=linear", "model.rope.factor=0.5"], "model.rope.factor=0.5"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_dry_run_and_real_start_refuse_alike_before_tokenizing(case, tmp_path, capsys):
    overrides, expect = BAD[case]
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run: {{name: bad, output_dir: '{runs}'}}\ndata: {{cache_dir: '{cache}'}}\ntrain: {{max_steps: 2}}\n")
    args = ["train", str(recipe), *sets(*overrides), "--nproc", "1"]
    assert cli.main([*args, "--dry-run"]) == 2
    dry = capsys.readouterr().err.strip()
    assert cli.main(args) == 2
    real = capsys.readouterr().err.strip()
    assert dry == real and "\n" not in real and expect in real, (dry, real)
    assert not cache.exists() and not runs.exists()


def test_wandb_requested_but_not_installed_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # what importlib sees when wandb is not installed
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run: {{name: bad, output_dir: '{runs}'}}\ndata: {{cache_dir: '{cache}'}}\ntrain: {{max_steps: 2}}\n")
    for dry in (["--dry-run"], []):
        assert cli.main(["train", str(recipe), *sets("run.report_to=[tensorboard,wandb]"), "--nproc", "1", *dry]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "pip install 'lsa-ds[wandb]'" in err, err
    assert not cache.exists() and not runs.exists()
