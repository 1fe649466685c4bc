"""Ulysses sequence parallelism with long-short pairs across shards: the rotation plan, and real
2-rank ZeRO-3 runs (gloo) against one rank without it — every parameter's gradient, losses and
counts; kill -9 and resume; an SP=2 checkpoint resumed with SP=1; the refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsa_ds import cli
from lsa_ds.align.pair_exchange import rotation_plan
from tests.conftest import SMALL_DATA
from tests.launch import ENV, kill_tree, lsa, per_step, sets, start, wait_for_step

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_rotation_plans_move_every_long_token_to_its_rotated_slot(n):
    """All ranks' plans together, emulating all_to_all_single: rank r ends with rotated slots
    [r·c, (r+1)·c) of every long row, slot j holding long position (j + E_b) mod L."""
    L, h = 24 * n, 3
    for shifts in ([1, L - 1], [24, 25, 23], [L // 2, 3 * L // 4, 1]):
        shifts = torch.tensor(shifts)
        B, c = len(shifts), L // n
        full = torch.randn(B, L, h)
        want = full.gather(1, ((torch.arange(L) + shifts[:, None]) % L)[..., None].expand(B, L, h))
        plans = [rotation_plan(shifts, L, n, r) for r in range(n)]
        sent = [list(full[:, r * c:(r + 1) * c].reshape(B * c, h)[p[0]].split(p[1])) for r, p in enumerate(plans)]
        for r, (_, _, recv_index, recv_splits) in enumerate(plans):
            arrived = torch.cat([sent[q][r] for q in range(n)])
            assert [len(sent[q][r]) for q in range(n)] == recv_splits
            got = torch.zeros(B * c, h).index_copy_(0, recv_index, arrived).view(B, c, h)
            torch.testing.assert_close(got, want[:, r * c:(r + 1) * c], rtol=0, atol=0)


# --------------------------------------------------------------------------- 2 ranks, gloo
def probe(tmp_path: Path, cache: Path, name: str, nproc: int, *overrides: str) -> dict:
    out = tmp_path / f"{name}.pt"
    recipe = [*SMALL_DATA, f"data.cache_dir={cache}", "model.preset=tiny", "train.seq_len=64", "train.max_steps=2",
              "train.micro_batch_size=2", "optim.lr=3e-3", *overrides]
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--no_local_rank",
           "--master_port", str(_port()), str(REPO / "tests" / "train" / "sp_grads_rank.py"), str(out), *sets(*recipe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **ENV}, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return torch.load(out)


def _port() -> int:
    from lsa_ds.train.distributed import free_port

    return free_port()


CASES = {
    # shifts in [1, 32] with c = 32: partners on the same rank (j + E < 32) and on the other one
    "overlap, grad_accum 2": ["align.alpha=0.5", "train.grad_accum=2"],
    "last, detach long": ["align.alpha=0.5", "align.positions=last", "align.detach=long"],
    "ratio, shifts up to L - 1": ["align.alpha=0.5", "align.positions=ratio", "align.shift_max=63", "align.divergence=skl"],
    "every 2 (a step without the divergence)": ["align.alpha=0.5", "align.every=2", "align.ce_views=long"],
    "alignment off": ["align.enabled=false"],
}


@pytest.mark.deepspeed
@pytest.mark.parametrize("case", list(CASES))
def test_sp2_gradients_losses_and_counts_equal_one_rank_without_sp(case, tmp_path, prepared, data_cache_dir):
    ref = probe(tmp_path, data_cache_dir, "sp1", 1, *CASES[case])
    got = probe(tmp_path, data_cache_dir, "sp2", 2, "train.sequence_parallel=2", *CASES[case])
    assert len(got["grads"]) == len(ref["grads"]) == 2
    for step_got, step_ref in zip(got["grads"], ref["grads"]):
        assert step_got.keys() == step_ref.keys() and len(step_ref) > 10
        for name in step_ref:
            torch.testing.assert_close(step_got[name], step_ref[name], rtol=0, atol=1e-5, msg=name)
    for a, b in zip(got["stats"], ref["stats"]):
        assert a["tokens"] == b["tokens"]
        for key in ("loss", "ce", "misalign_sce", "misalign_skl", "grad_norm"):
            assert (a[key] is None) == (b[key] is None) and (a[key] is None or a[key] == pytest.approx(b[key], abs=1e-5)), key


def common(out: Path, cache: Path, name: str, *extra: str) -> list[str]:
    return sets(*SMALL_DATA, f"data.cache_dir={cache}", f"run.output_dir={out}", f"run.name={name}",
                "model.preset=tiny", "train.seq_len=64", "train.max_steps=8", "train.micro_batch_size=1",
                "train.grad_accum=2", "optim.lr=3e-3", "eval.windows=4", "checkpoint.every_steps=2",
                "train.dist_timeout_s=30", "train.sequence_parallel=2", *extra)


@pytest.mark.deepspeed
def test_sp2_kill_9_resume_and_resume_with_sp1_on_one_rank(tmp_path, prepared, data_cache_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("align: {enabled: true, alpha: 0.1}\n")
    # keep_last=4 keeps the step-4 checkpoint that one rank continues below
    lsa("train", str(recipe), *common(tmp_path, data_cache_dir, "ref", "checkpoint.keep_last=4"), "--nproc", "2")
    proc = start(recipe, common(tmp_path, data_cache_dir, "killed"))
    wait_for_step(tmp_path / "killed", 5, proc)
    kill_tree(proc)
    proc.wait()
    lsa("train", str(recipe), *common(tmp_path, data_cache_dir, "killed"), "--resume", "--nproc", "2")
    assert per_step(tmp_path / "killed") == per_step(tmp_path / "ref")
    # the step-4 checkpoint of the 2-rank SP run, continued by one rank without SP: same windows, same losses
    import shutil

    one = tmp_path / "one"
    shutil.copytree(tmp_path / "ref", one)
    for tag in (one / "checkpoints").iterdir():
        if tag.name.startswith("step") and tag.name != "step00000004":
            shutil.rmtree(tag)
    (one / "checkpoints" / "latest").write_text("step00000004")
    done = lsa("train", str(recipe), *common(tmp_path, data_cache_dir, "one", "checkpoint.keep_last=4",
                                             "train.sequence_parallel=1"), "--resume", "--nproc", "1")
    assert "resumed from step00000004" in done.stdout, done.stdout
    got, want = per_step(one), per_step(tmp_path / "ref")
    assert [got[s][1] for s in range(5, 9)] == [want[s][1] for s in range(5, 9)]  # the same windows
    # the weights are restored exactly, so step 5 matches; the optimizer state passes through
    # DeepSpeed's universal format (another world size), and later steps drift slightly (measured:
    # 3e-7, 3e-5, 2e-3, 3e-3), as in test_checkpoint's elastic resume
    assert got[5][0] == pytest.approx(want[5][0], abs=1e-5)
    for s in range(6, 9):
        assert got[s][0] == pytest.approx(want[s][0], abs=1e-2)


@pytest.mark.parametrize("setting, nproc, expect", [
    (["model.overrides={hidden_size: 48, num_attention_heads: 3, num_key_value_heads: 3}"], 2, "3 attention heads are not divisible"),
    (["model.overrides={hidden_size: 96, num_attention_heads: 6, num_key_value_heads: 3}"], 2, "3 key/value heads"),
    (["train.seq_len=66", "align.shift_max=32"], 4, "train.seq_len=66 is not divisible"),
    ([], 3, "the world size 3 is not divisible"),
    (["model.attn_impl=eager"], 2, "Ulysses needs sdpa"),
    (["model.overrides={model_type: gemma}"], 2, "model type 'gemma' is not supported"),
])
def test_impossible_sequence_parallel_settings_are_refused_before_anything_starts(setting, nproc, expect, tmp_path,
                                                                                   data_cache_dir, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    out = tmp_path / "runs"
    args = common(out, data_cache_dir, "bad") + sets(*setting)
    if nproc == 4:
        args += sets("train.sequence_parallel=4")
    code = cli.main(["train", str(recipe), *args, "--nproc", str(nproc)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and expect in err, err
    assert not out.exists()


@pytest.mark.deepspeed
def test_four_ranks_dp2_x_sp2_train_as_two_data_parallel_ranks_do(tmp_path, prepared, data_cache_dir):
    """SP groups {0, 1} and {2, 3} read the windows of data-parallel ranks 0 and 1."""
    import json

    recipe = tmp_path / "r.yaml"
    recipe.write_text("align: {enabled: true, alpha: 0.1}\n")
    short = sets("train.max_steps=3", "checkpoint.every_steps=100")
    lsa("train", str(recipe), *common(tmp_path, data_cache_dir, "dp2sp2"), *short, "--nproc", "4")
    lsa("train", str(recipe), *common(tmp_path, data_cache_dir, "dp2", "train.sequence_parallel=1"), *short, "--nproc", "2")
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("dp2sp2", "dp2")}
    assert len(rows["dp2"]) == len(rows["dp2sp2"]) == 4  # 3 steps and the final evaluation
    for a, b in zip(rows["dp2sp2"], rows["dp2"]):
        if a.get("kind") == "eval":
            assert a["loss@64"] == pytest.approx(b["loss@64"], abs=1e-5)
            continue
        assert a["sample_ids"] == b["sample_ids"]
        for key in ("loss", "misalign_sce", "grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
