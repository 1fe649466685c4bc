"""Checkpoints through real 2-rank ZeRO-3 runs: exact resume after SIGKILL, SIGTERM, a kill during a
save, the numerics guard, a dying rank, elastic resume, refusal of incompatible changes, export."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lsa_ds import cli
from tests.conftest import SMALL_DATA
from tests.launch import kill_tree, lsa, metrics, per_step, sets, start, wait_for_step

pytestmark = pytest.mark.deepspeed

STEPS = 10


def common(out: Path, cache: Path, name: str) -> list[str]:
    return sets(*SMALL_DATA, f"data.cache_dir={cache}", f"run.output_dir={out}", f"run.name={name}",
                "model.preset=tiny", "train.seq_len=64", f"train.max_steps={STEPS}", "train.micro_batch_size=1",
                "train.grad_accum=2", "optim.lr=3e-3", "optim.warmup_steps=2", "eval.windows=4",
                "checkpoint.every_steps=2", "checkpoint.keep_last=2", "train.dist_timeout_s=30")


@pytest.fixture(scope="module")
def env(tmp_path_factory, prepared, data_cache_dir):
    out = tmp_path_factory.mktemp("ckpt-runs")
    recipe = out / "r.yaml"
    recipe.write_text("align: {enabled: true, alpha: 0.1}\n")
    lsa("train", str(recipe), *common(out, data_cache_dir, "ref"), "--nproc", "2")
    return out, recipe, data_cache_dir


def test_sigkill_anywhere_then_resume_is_bit_identical(env):
    out, recipe, cache = env
    proc = start(recipe, common(out, cache, "killed"))
    wait_for_step(out / "killed", 5, proc)
    kill_tree(proc)  # every rank and the launcher, mid-training
    proc.wait()
    lsa("train", str(recipe), *common(out, cache, "killed"), "--resume", "--nproc", "2")
    assert per_step(out / "killed") == per_step(out / "ref")  # same losses, same sample ids, every step once


def test_sigterm_saves_and_exits_cleanly_then_resumes(env):
    out, recipe, cache = env
    wandb = sets("checkpoint.every_steps=100", "run.report_to=[tensorboard,wandb]")  # offline: tests.launch.ENV
    proc = start(recipe, common(out, cache, "term") + wandb)
    wait_for_step(out / "term", 3, proc)
    os.kill(proc.pid, signal.SIGTERM)  # what SLURM sends on preemption
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "stopped by signal" in output
    saved = json.loads((out / "term" / "checkpoints" / "latest").read_text().removeprefix("step").lstrip("0") or "0")
    assert 3 <= saved < STEPS
    lsa("train", str(recipe), *common(out, cache, "term"), *wandb, "--resume", "--nproc", "2")
    assert per_step(out / "term") == per_step(out / "ref")
    # the resumed run continues the same wandb run (wandb writes one offline folder per start)
    run_id = (out / "term" / "wandb" / "run-id").read_text().strip()
    assert [p.name.rsplit("-", 1)[1] for p in (out / "term" / "wandb").glob("offline-run-*")] == [run_id] * 2
    # alignment on: both views are rows (micro 1 × 2 views × accum 2 × 2 ranks), one view is the window's
    train, _ = metrics(out / "term")
    assert all(r["tokens_per_s"] * r["step_time"] == pytest.approx(8 * 64) for r in train)
    assert all(r["effective_tokens_per_s"] == pytest.approx(r["tokens_per_s"] / 2) for r in train)


def test_ctrl_c_stops_with_one_line_and_no_traceback(env):
    """Ctrl-C in a terminal signals the foreground process group: `lsa train`'s own group."""
    out, recipe, cache = env
    proc = start(recipe, common(out, cache, "ctrlc") + sets("checkpoint.every_steps=100"))
    wait_for_step(out / "ctrlc", 2, proc)
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "stopped by signal at step" in output and "resume with --resume" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    # a log, not a terminal: plain progress lines, no carriage returns, no known-harmless warnings
    assert "\r" not in output and "FutureWarning" not in output and "step 1/10 loss" in output, output[-3000:]
    assert (out / "ctrlc" / "checkpoints" / "latest").is_file() and (out / "ctrlc" / "curves.png").is_file()


def test_kill_during_save_leaves_previous_checkpoint(env):
    out, recipe, cache = env
    proc = start(recipe, common(out, cache, "save"), {"LSA_TEST_KILL_IN_SAVE": "6"})
    proc.wait(timeout=240)
    ckpts = out / "save" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step00000004"
    assert not (ckpts / "step00000006" / "COMPLETE").exists()
    lsa("train", str(recipe), *common(out, cache, "save"), "--resume", "--nproc", "2")
    assert per_step(out / "save") == per_step(out / "ref")


def test_non_finite_steps_are_skipped_then_abort(env):
    out, recipe, cache = env
    proc = start(recipe, common(out, cache, "nan") + sets("train.max_skipped_steps=2"), {"LSA_TEST_NONFINITE_STEPS": "3,6,7"})
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0
    assert "2 steps in a row had a non-finite loss" in output
    train, _ = metrics(out / "nan")
    skipped = [r["step"] for r in train if r.get("skipped")]
    assert skipped == [3, 6, 7]
    # the newest checkpoint (a skipped step leaves the weights as they were) is kept; no export
    assert (out / "nan" / "checkpoints" / "latest").read_text() == "step00000006"
    assert (out / "nan" / "checkpoints" / "step00000006" / "COMPLETE").exists() and not (out / "nan" / "hf").exists()


def test_a_dying_rank_stops_the_others_quickly_and_is_named(env):
    out, recipe, cache = env
    proc = start(recipe, common(out, cache, "die"), {"LSA_TEST_DIE_AT": "1:4"})
    output, _ = proc.communicate(timeout=180)
    ended = time.time()
    assert proc.returncode != 0
    died = float(re.search(r"rank 1 kills itself at step 4 \(t=([\d.]+)\)", output).group(1))
    assert ended - died < 60, f"{ended - died:.1f} s from the death to the last rank's exit"
    assert re.search(r"error: rank 1 \(local rank 1, pid \d+\) was killed by SIGKILL", output), output[-3000:]


def _tree(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_refuses_a_changed_recipe_unless_each_change_is_allowed_and_records_it(env, capsys):
    out, recipe, cache = env
    run = out / "ref"
    before = _tree(run)
    code = cli.main(["train", str(recipe), *common(out, cache, "ref"), *sets("train.seq_len=32"), "--resume",
                     "--allow-change", "train.seq_len"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train.seq_len: 64 -> 32" in err and "start a new run" in err and "\n" not in err, err
    # alpha and the schedule's length change what the run computes: every change named, nothing written
    changed = [*common(out, cache, "ref"), *sets("align.alpha=0.5", "train.max_steps=11", "checkpoint.keep_last=3")]
    code = cli.main(["train", str(recipe), *changed, "--resume", "--allow-change", "align.alpha"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert "train.max_steps: 10 -> 11" in err and "--allow-change train.max_steps" in err, err
    assert "align.alpha" not in err.partition("differs from")[2].partition("; to continue")[0], err  # allowed
    assert "checkpoint.keep_last" not in err  # free to change: storage only
    # accumulation that changes the global batch (4 windows, saved by 2 ranks) changes the run; one
    # that keeps it on another number of ranks is free (test_two_rank_checkpoint_resumes_on_one_rank...)
    code = cli.main(["train", str(recipe), *common(out, cache, "ref"), *sets("train.grad_accum=3"), "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train.grad_accum: 2 -> 3" in err and "was 4 on 2 ranks" in err, err
    assert _tree(run) == before
    # allowed: trained on from the last checkpoint, the change recorded with the step it took effect at
    done = lsa("train", str(recipe), *changed, "--resume", "--allow-change", "align.alpha",
               "--allow-change", "train.max_steps", "--nproc", "2")
    assert "with a changed recipe" in done.stdout and "align.alpha: 0.1 -> 0.5" in done.stdout
    assert max(per_step(run)) == 11
    (history,) = [json.loads(line) for line in (run / "config-history.jsonl").read_text().splitlines()]
    assert history["step"] == 10 and history["allowed"] == ["align.alpha", "train.max_steps"]
    assert {c["key"]: (c["old"], c["new"]) for c in history["changes"]} == {
        "align.alpha": (0.1, 0.5), "train.max_steps": (10, 11), "checkpoint.keep_last": (2, 3)}
    assert "alpha: 0.5" in (run / "config.yaml").read_text()


def test_a_full_disk_stops_the_save_with_one_line_and_resume_continues_from_the_previous_checkpoint(env, tmp_path):
    """The run directory on a size-limited tmpfs that holds two checkpoints and not a third: the third
    save fails on every rank, the run stops with one line, the unfinished folder is gone, the previous
    checkpoint is intact; with space again, --resume continues exactly."""
    out, recipe, cache = env
    newest = sorted((out / "ref" / "checkpoints").glob("step*/COMPLETE"))[-1].parent
    ckpt = sum(f.stat().st_size for f in newest.iterdir())
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={2 * ckpt + 400_000}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({mounted.stderr.strip()})")
    try:
        args = [a if a != f"run.output_dir={out}" else f"run.output_dir={disk}" for a in common(out, cache, "full")]
        failed = lsa("train", str(recipe), *args, "--nproc", "2", check=False)
        run = disk / "full"
        errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
        assert failed.returncode != 0 and len(errors) == 1, failed.stderr[-3000:]
        assert "checkpoint step00000006 could not be written" in errors[0] and "No space left on device" in errors[0]
        assert "step00000004 is complete" in errors[0] and "Traceback" not in failed.stderr
        assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step00000002", "step00000004"]
        assert (run / "checkpoints" / "latest").read_text() == "step00000004"
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        lsa("train", str(recipe), *args, "--resume", "--nproc", "2")
        assert per_step(run) == {k: v for k, v in per_step(out / "ref").items() if k <= STEPS}
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_corrupt_or_truncated_checkpoint_is_refused_naming_the_file_and_the_previous_one(env, capsys):
    out, recipe, cache = env
    run = out / "corrupt"
    lsa("train", str(recipe), *common(out, cache, "corrupt"), *sets("train.max_steps=4"), "--nproc", "2")
    newest = run / "checkpoints" / "step00000004"
    manifest = json.loads((newest / "manifest.json").read_text())["files"]
    assert {"client.json", "rng-rank0.json", "rng-rank1.json"} <= set(manifest) and len(manifest) >= 7
    victim = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    blob = victim.read_bytes()
    victim.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))  # one bit flipped: same size
    args = [*common(out, cache, "corrupt"), *sets("train.max_steps=6"), "--allow-change", "train.max_steps"]
    assert cli.main(["train", str(recipe), *args, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{victim}: checksum differs from the manifest (corrupt)" in err and "\n" not in err
    assert "previous complete checkpoint is step00000002" in err and "--resume-from 2" in err
    assert cli.main(["export", str(run), "--out", str(out / "corrupt-export")]) == 2
    assert "checksum differs" in capsys.readouterr().err and not (out / "corrupt-export").exists()
    victim.write_bytes(blob[:1000])  # truncated
    assert cli.main(["train", str(recipe), *args, "--resume"]) == 2
    assert "1000 bytes, " in capsys.readouterr().err
    # the user says so: continue from the previous one; the newer one is kept aside, not used
    lsa("train", str(recipe), *args, "--resume", "--resume-from", "2", "--nproc", "2")
    assert max(per_step(run)) == 6 and (run / "checkpoints" / "step00000004-superseded").is_dir()


def test_two_rank_checkpoint_resumes_on_one_rank_with_same_data_order(env):
    out, recipe, cache = env
    proc = start(recipe, common(out, cache, "elastic"), {"LSA_TEST_KILL_IN_SAVE": "8"})
    proc.wait(timeout=240)
    # one rank with twice the accumulation keeps the global batch (and so the step <-> samples map)
    lsa("train", str(recipe), *common(out, cache, "elastic"), *sets("train.grad_accum=4"), "--resume", "--nproc", "1")
    got, ref = per_step(out / "elastic"), per_step(out / "ref")
    # resumed from step 6 on one rank: the weights are restored exactly, so step 7 matches; the
    # optimizer state passes through DeepSpeed's universal format, and later steps drift slightly
    assert got[7][0] == pytest.approx(ref[7][0], abs=1e-5)
    for step in range(8, STEPS + 1):
        assert got[step][0] == pytest.approx(ref[step][0], abs=1e-2)
    # rank 0 of one rank sees the whole global batch: ids [c, c+1, c+2, c+3]
    for step in range(7, STEPS + 1):
        first = (step - 1) * 4
        assert sorted(i for ids in got[step][1] for i in ids) == list(range(first, first + 4))
        assert set(i for ids in ref[step][1] for i in ids) <= set(range(first, first + 4))


def test_export_matches_the_training_model_and_tokenizer_round_trips(env, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lsa_ds.data import open_cache
    from lsa_ds.eval.forward import hf_logits_fn
    from lsa_ds.eval.heldout import cache_windows
    from lsa_ds.eval.perplexity import perplexity_at
    from lsa_ds.recipe import load_recipe

    out, _, _ = env
    run = out / "ref"
    bad = lsa("export", str(run), "--step", "3", "--out", str(tmp_path / "x"), check=False)
    assert bad.returncode == 2 and "no complete checkpoint for step 3" in bad.stderr
    lsa("export", str(run), "--out", str(tmp_path / "exp"))  # the newest checkpoint = the final step
    a = AutoModelForCausalLM.from_pretrained(run / "hf")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "exp")
    recipe = load_recipe(run / "config.yaml")
    cache = open_cache(recipe.data)
    windows = cache_windows(recipe, cache, 129, recipe.eval.windows)  # the held-out windows the run evaluated
    ids = torch.tensor(windows[:, -65:])
    with torch.no_grad():
        la, lb = a(ids[:, :-1]).logits, b(ids[:, :-1]).logits
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
    _, evals = metrics(run)
    nll = perplexity_at(hf_logits_fn(a), windows, [64, 128])[64].nll.mean  # as the run scored it
    assert nll == pytest.approx(evals[-1]["loss@64"], abs=1e-4)
    assert b.config.max_position_embeddings == 128
    tok = AutoTokenizer.from_pretrained(tmp_path / "exp")
    text = "def f(x):\n    return x  # héllo 🙂\n\n\tend"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok(text, add_special_tokens=False)["input_ids"] == cache.tokenizer.encode_raw([text])[0]
    assert (tok.bos_token_id, tok.eos_token_id) == (cache.tokenizer.bos_id, cache.tokenizer.eos_id)


def test_fsync_tree_skips_temporaries_and_files_renamed_away(tmp_path, monkeypatch):
    """Another rank renames its temporary between our listing and our open: the save goes on."""
    from lsa_ds.train import checkpoint

    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / ".rng-rank0.json.tmp-1").write_text("{}")
    ghost = tmp_path / "gone.json"
    ghost.write_text("{}")
    real_open = open

    def racing_open(path, *args, **kwargs):
        if Path(path) == ghost:
            raise FileNotFoundError(path)  # renamed by its writer after rglob listed it
        assert not Path(path).name.startswith("."), path
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", racing_open)
    checkpoint._fsync_tree(tmp_path)
