"""The training loop of one rank: data -> engine steps -> logs, evaluation, checkpoints, export.

`train` reads as its steps: `build` (data, model, engine, run.json), `restore` (a checkpoint's
engine state, RNG and data position), `run_steps` (the loop), `finish` (curves, the last line).

Run directory (docs/design.md, "The run directory"): config.yaml and ds_config.json are written
before the ranks start (by `lsa train`); this loop appends metrics.jsonl, writes tb/, run.json
(what was built: RoPE, parameter counts, world size), checkpoints/ and, at the end, hf/ — renamed
into place only when complete, so hf/ existing means the run finished.

Stopping: SIGTERM/SIGINT only set a flag; at the next step boundary the ranks agree on it (one
all-reduce) and save together, then exit cleanly. Numerics: a step with a non-finite loss or
gradient norm is skipped by every rank (DeepSpeed's ZeRO optimizer discards it), counted and
logged; `train.max_skipped_steps` in a row abort with the last good checkpoint kept.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from lsa_ds.align.objective import divergence_applies, divergence_measured
from lsa_ds.align.views import micro_views
from lsa_ds.data import TokenCache, build_windows, open_cache
from lsa_ds.data.windows import WindowLoader
from lsa_ds.errors import UserError
from lsa_ds.model.build import build_model, count_params, local_param_numel
from lsa_ds.model.config import build_hf_config, rope_summary
from lsa_ds.model.memory import peak_memory_mb
from lsa_ds.recipe import Recipe, recipe_to_dict
from lsa_ds.rundir.curves import draw_curves
from lsa_ds.rundir.metrics import MetricsLog
from lsa_ds.train import checkpoint
from lsa_ds.train.engine import Engine, StepStats
from lsa_ds.train.evaluation import eval_lengths, evaluate
from lsa_ds.train.export import export_from_engine
from lsa_ds.train.throughput import device_name, device_peak, step_figures

NAN_TEST_HOOK = "LSA_TEST_NONFINITE_STEPS"
"""Test hook: comma-separated optimizer steps whose loss is made non-finite on purpose."""
DIE_TEST_HOOK = "LSA_TEST_DIE_AT"
"""Test hook: `RANK:STEP` — that rank SIGKILLs itself at the start of that step."""


class TrainingAborted(RuntimeError):
    """Raised on every rank when the run cannot continue (e.g. too many non-finite steps)."""


def total_steps(recipe: Recipe, world: int) -> int:
    t = recipe.train
    if t.max_steps:
        return t.max_steps
    if t.token_budget:  # windows per step: micro × accum × data-parallel ranks
        dp = world // t.sequence_parallel
        return max(1, math.ceil(t.token_budget / (t.micro_batch_size * t.grad_accum * dp * t.seq_len)))
    raise UserError("train.max_steps or train.token_budget must be set")


def window_loader(recipe: Recipe, cache: TokenCache, rank: int, world: int) -> WindowLoader:
    """This rank's training windows. The ranks of a sequence-parallel group (N consecutive ranks)
    read the same windows, those of data-parallel rank rank // N; each trains its slice of them."""
    sp, t = recipe.train.sequence_parallel, recipe.train
    return WindowLoader(build_windows(recipe, cache), t.micro_batch_size, t.grad_accum, rank // sp, world // sp)


class StopFlag:
    """SIGTERM/SIGINT set a flag; ranks agree on it at step boundaries (never act in the handler)."""

    def __init__(self):
        self.raised = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.raised = True

    def agreed(self) -> bool:
        flag = torch.tensor([1.0 if self.raised else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


@dataclass
class Run:
    """What one rank built before its first step."""

    recipe: Recipe
    run_dir: Path
    rank: int
    world: int
    cache: TokenCache
    hf_config: object
    lm: torch.nn.Module
    engine: Engine
    loader: WindowLoader
    steps: int
    peak_tflops: float | None = None
    """One device's peak TFLOP/s at the training precision (MFU's denominator; None: unknown)."""


@dataclass
class Progress:
    """What the loop carries from step to step (and a checkpoint carries across a restart)."""

    step: int = 0
    skipped_total: int = 0
    skipped_in_row: int = 0
    loss_ema: float | None = None
    last_saved: int | None = None


def build(recipe: Recipe, run_dir: Path, ds_config: dict) -> Run:
    """Data, HF config, model (partitioned at construction under ZeRO-3), engine; run.json."""
    rank, world = dist.get_rank(), dist.get_world_size()
    cache = open_cache(recipe.data)
    tok = cache.tokenizer
    hf_config = build_hf_config(recipe, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)
    steps = total_steps(recipe, world)
    lm = build_model(recipe, hf_config, ds_config)
    engine = Engine(recipe, ds_config, lm, steps)
    run = Run(recipe, run_dir, rank, world, cache, hf_config, lm, engine, window_loader(recipe, cache, rank, world), steps,
              device_peak(recipe))
    _record_run(run)
    return run


def _record_run(run: Run) -> None:
    """run.json: what was built (collective: every rank reports the parameters it holds)."""
    held = torch.tensor([local_param_numel(run.lm)], dtype=torch.float64)
    per_rank = [torch.zeros_like(held) for _ in range(run.world)]
    dist.all_gather(per_rank, held)
    if run.rank == 0:
        info = {"world_size": run.world, "steps": run.steps, "params": count_params(run.lm),
                "trainable_params": count_params(run.lm, trainable=True), "rope": rope_summary(run.hf_config),
                "params_per_rank": [int(t.item()) for t in per_rank], "torch": torch.__version__,
                "token_cache": str(run.cache.folder), "vocab_size": run.cache.tokenizer.vocab_size,
                "device": device_name() or "cpu", "peak_tflops": run.peak_tflops}
        (run.run_dir / "run.json").write_text(json.dumps(info, indent=2))


def restore(run: Run, resume_tag: str | None, ds_config: dict) -> Progress:
    """Engine, optimizer, scheduler, RNG and the data position from `resume_tag` (collective);
    a fresh Progress without one."""
    if not resume_tag:
        return Progress()
    universal = bool(ds_config.get("checkpoint", {}).get("load_universal"))
    client = checkpoint.load(run.engine, run.run_dir / "checkpoints", resume_tag, universal)
    run.loader.load_state_dict({"consumed_samples": client["consumed_samples"]})
    if run.rank == 0:
        print(f"resumed from {resume_tag}: step {client['step']}, {client['consumed_samples']} samples consumed"
              + (f" (written by {client['world_size']} ranks, now {run.world})" if universal else ""))
    return Progress(step=client["step"], skipped_total=client.get("skipped_steps", 0), last_saved=client["step"])


def save(run: Run, progress: Progress, at: int) -> None:
    """A checkpoint of step `at` unless it was just written (collective)."""
    if progress.last_saved != at:
        checkpoint.save(run.engine, run.run_dir, run.recipe, at, run.loader.consumed_samples,
                        {"skipped_steps": progress.skipped_total})
        progress.last_saved = at


def train_row(run: Run, step: int, stats: StepStats, applied: bool, batch) -> dict:
    """The metrics row of one optimizer step (throughput keys: `lsa_ds.train.throughput`)."""
    paired = run.recipe.align.enabled and applied
    return {"step": step, "loss": stats.loss, "ce": stats.ce, "misalign": stats.misalign,
            "misalign_sce": stats.misalign_sce, "misalign_skl": stats.misalign_skl, "ce_gap": stats.ce_gap,
            **({"divergence_applied": applied} if run.recipe.align.enabled else {}), "lr": stats.lr,
            "grad_norm": stats.grad_norm,
            **step_figures(run.recipe, run.hf_config, run.world, stats.rows, stats.step_time, paired, run.peak_tflops),
            "step_time": stats.step_time, "consumed_samples": run.loader.consumed_samples,
            "peak_mem_mb": peak_memory_mb(), "sample_ids": [ids for ids, _ in batch] if run.rank == 0 else None}


def log_step(run: Run, progress: Progress, stats: StepStats, row: dict, log: MetricsLog) -> None:
    """Write the step's row when due, guarding the numerics: a non-finite step is logged as skipped
    (too many in a row abort the run); a loss above 1.5× its recent average is flagged as a spike."""
    step = row["step"]
    finite = math.isfinite(stats.loss) and (stats.grad_norm is None or math.isfinite(stats.grad_norm))
    if not finite:
        progress.skipped_total += 1
        progress.skipped_in_row += 1
        log.write({**row, "skipped": True, "skipped_steps": progress.skipped_total})
        log.note(f"step {step} skipped: non-finite loss or gradient norm ({progress.skipped_total} so far)")
        if progress.skipped_in_row >= run.recipe.train.max_skipped_steps:
            raise TrainingAborted(f"{progress.skipped_in_row} steps in a row had a non-finite loss or gradient norm "
                                  f"(last at step {step}); stopping with the last good checkpoint kept")
        return
    progress.skipped_in_row = 0
    ema = progress.loss_ema
    if ema is not None and stats.loss > 1.5 * ema:
        row["spike"] = True
        log.note(f"loss spike at step {step}: {stats.loss:.3f} vs recent {ema:.3f}")
    progress.loss_ema = stats.loss if ema is None else 0.9 * ema + 0.1 * stats.loss
    if step % run.recipe.run.log_every == 0 or step == run.steps or row.get("spike"):
        log.write(row)


def run_steps(run: Run, progress: Progress, log: MetricsLog) -> str:
    """Optimizer steps from progress.step + 1 to the end, or until a signal: 'done' or 'stopped'."""
    recipe, rank = run.recipe, run.rank
    stop = StopFlag()
    lengths = eval_lengths(recipe)
    poisoned = {int(s) for s in os.environ.get(NAN_TEST_HOOK, "").split(",") if s}
    die = os.environ.get(DIE_TEST_HOOK, "").split(":")
    for step in range(progress.step + 1, run.steps + 1):
        progress.step = step
        if die == [str(rank), str(step)]:
            print(f"test hook: rank {rank} kills itself at step {step} (t={time.time():.3f})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        batch = run.loader.next_step()
        applied = divergence_applies(recipe.align, step)
        stats = run.engine.train_step([micro_views(recipe, ids, w) for ids, w in batch],
                                      measure_divergence=divergence_measured(recipe.align, step),
                                      poison=step in poisoned)
        log.advance()
        log_step(run, progress, stats, train_row(run, step, stats, applied, batch), log)
        every = recipe.eval.every_steps
        if step == run.steps or (every and step % every == 0):
            log.write({"kind": "eval", "step": step, **evaluate(run.engine, recipe, run.cache, lengths, rank, run.world)})
        if recipe.checkpoint.every_steps and step % recipe.checkpoint.every_steps == 0:
            save(run, progress, step)
        if stop.agreed():
            save(run, progress, step)
            return "stopped"
    save(run, progress, run.steps)
    export_from_engine(run.engine, run.lm, run.hf_config, run.cache.tokenizer, run.run_dir / "hf")
    return "done"


def finish(run: Run, status: str, step: int) -> None:
    """Rank 0 draws the curves and says how the run ended."""
    if run.rank != 0:
        return
    draw_curves(run.run_dir)
    if status == "stopped":
        print(f"stopped by signal at step {step}; checkpoint saved, resume with --resume")
    else:
        print(f"done: {run.steps} steps; model exported to {run.run_dir / 'hf'}; curves in {run.run_dir / 'curves.png'}")


def train(recipe: Recipe, run_dir: Path, ds_config: dict, resume_tag: str | None = None) -> str:
    """Run on every rank (dist already initialised). Returns 'done' or 'stopped'."""
    run = build(recipe, run_dir, ds_config)
    progress = restore(run, resume_tag, ds_config)
    log = MetricsLog(run_dir, run.steps, progress.step, run.rank == 0, recipe.run.report_to, recipe_to_dict(recipe))
    try:
        status = run_steps(run, progress, log)
    finally:
        log.close()
    finish(run, status, progress.step)
    return status
