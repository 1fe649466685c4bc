"""The training loop of one rank: data -> engine steps -> logs, evaluation, checkpoints, export.

Run directory (DESIGN.md §3): config.yaml and ds_config.json are written before the ranks start
(by `lsa train`); this loop appends metrics.jsonl, writes tb/, run.json (what was built: RoPE,
parameter counts, world size), checkpoints/ and, at the end, hf/ — renamed into place only when
complete, so hf/ existing means the run finished.

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
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lsa_ds import checkpoint
from lsa_ds.config import Recipe
from lsa_ds.data import build_windows, open_cache
from lsa_ds.data.views import draw_shifts, make_views
from lsa_ds.data.windows import WindowLoader
from lsa_ds.engine import Engine, peak_memory_mb
from lsa_ds.errors import UserError
from lsa_ds.metrics_log import MetricsLog

NAN_TEST_HOOK = "LSA_TEST_NONFINITE_STEPS"
"""Test hook: comma-separated optimizer steps whose loss is made non-finite on purpose."""
DIE_TEST_HOOK = "LSA_TEST_DIE_AT"
"""Test hook: `RANK:STEP` — that rank SIGKILLs itself at the start of that step."""


EVAL_SHIFT_KEY = 1 << 40
"""Held-out windows draw their shifts from sample keys offset by this, apart from training samples."""


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


def eval_lengths(recipe: Recipe) -> list[int]:
    """Context lengths of the in-training evaluation: eval.lengths, or L and 2L."""
    return sorted(recipe.eval.lengths or [recipe.train.seq_len, 2 * recipe.train.seq_len])


def window_loader(recipe: Recipe, cache, rank: int, world: int) -> WindowLoader:
    """This rank's training windows. The ranks of a sequence-parallel group (N consecutive ranks)
    read the same windows, those of data-parallel rank rank // N; each trains its slice of them."""
    sp, t = recipe.train.sequence_parallel, recipe.train
    return WindowLoader(build_windows(recipe, cache), t.micro_batch_size, t.grad_accum, rank // sp, world // sp)


def micro_views(recipe: Recipe, ids: list[int], windows: np.ndarray) -> dict:
    """Model inputs for one micro-batch: long view only (baseline) or long + short views."""
    if not recipe.align.enabled:
        return make_views(windows, recipe.train.seq_len)
    return both_views(recipe, ids, windows, recipe.align.ce_views)


def evaluate(engine: Engine, recipe: Recipe, cache, lengths: list[int], rank: int, world: int) -> dict:
    """Held-out loss at each length exactly as `lsa eval` measures it (the same windows, spread
    over the eval split, and the same final K = min(lengths)/2 tokens scored at every length; so
    `loss@N` of the last row is the `nll@N` that `lsa eval RUN --windows eval.windows` reports),
    and the long-short misalignment of held-out windows with fixed shifts (every arm)."""
    from lsa_ds.eval.forward import hf_logits_fn
    from lsa_ds.eval.heldout import cache_windows
    from lsa_ds.eval.perplexity import perplexity_at

    out = {}
    engine.ds.eval()
    logits_fn = hf_logits_fn(engine.module.hf)
    heldout = cache_windows(recipe, cache, max(lengths) + 1, recipe.eval.windows)
    for n, r in perplexity_at(logits_fn, heldout, lengths).items():
        out[f"loss@{n}"], out[f"ppl@{n}"] = r.nll.mean, r.ppl
    if len(recipe.data.sources) > 1:  # and each source's held-out text apart (natural text, a mixture)
        for name, one in per_source(recipe, cache):
            own = cache_windows(one, cache, max(lengths) + 1, recipe.eval.windows)
            out.update({f"loss@{n}/{name}": r.nll.mean for n, r in perplexity_at(logits_fn, own, lengths).items()})
    mbs = recipe.train.micro_batch_size
    mine = [rank + k * world for k in range(math.ceil(recipe.eval.windows / world))]
    ids = [mine[i:i + mbs] for i in range(0, len(mine), mbs)]
    # Misalignment of every model, baseline included (no gradient: the pairs cost one more forward
    # of both views). Shifts keyed by held-out sample ids offset far from training ids: the same
    # every evaluation and in every arm, since windows hold L + shift_max + 1 tokens either way.
    windows = build_windows(recipe, cache, "eval")
    sums = engine.eval_sums([both_views(recipe, [EVAL_SHIFT_KEY + i for i in batch], np.stack([windows[i] for i in batch]))
                             for batch in ids])
    pairs = max(sums["pair_count"], 1.0)
    out.update(misalign_sce=sums["sce_sum"] / pairs, misalign_skl=sums["skl_sum"] / pairs,
               ce_gap=sums["gap_sum"] / pairs)
    # SCE = H(long) + H(short) + symmetric KL at every position, so the mean entropy of the two
    # views' predictions is exact from the two sums: "SCE fell because entropy fell" is visible.
    out["misalign_entropy"] = (out["misalign_sce"] - out["misalign_skl"]) / 2
    return out


def per_source(recipe: Recipe, cache) -> list[tuple[str, Recipe]]:
    """(source name, the recipe restricted to that source) for each source with held-out documents."""
    out = []
    for src in recipe.data.sources:
        if cache.store(src.name, "eval").num_docs:
            one = recipe.model_copy(deep=True)
            one.data.sources = [src]
            out.append((src.name, one))
    return out


def both_views(recipe: Recipe, ids: list[int], windows: np.ndarray, ce_views: str = "both") -> dict:
    """Both views of `windows` with the recipe's shift range and pair positions: a training micro-batch
    with alignment on, and every arm's held-out misalignment (the baseline measured the same way)."""
    L, a = recipe.train.seq_len, recipe.align
    shifts = draw_shifts(ids, recipe.train.seed, a.shift_min, recipe.shift_max)
    return make_views(windows, L, shifts, positions=a.positions, min_ratio=a.min_ratio, ce_views=ce_views)


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


def _record_run(run_dir: Path, lm, hf_config, cache, world: int, steps: int) -> None:
    from lsa_ds.model import count_params, local_param_numel, rope_summary

    held = torch.tensor([local_param_numel(lm)], dtype=torch.float64)
    per_rank = [torch.zeros_like(held) for _ in range(world)]
    dist.all_gather(per_rank, held)
    if dist.get_rank() == 0:
        info = {"world_size": world, "steps": steps, "params": count_params(lm),
                "trainable_params": count_params(lm, trainable=True), "rope": rope_summary(hf_config),
                "params_per_rank": [int(t.item()) for t in per_rank], "torch": torch.__version__,
                "token_cache": str(cache.folder), "vocab_size": cache.tokenizer.vocab_size}
        (run_dir / "run.json").write_text(json.dumps(info, indent=2))


def train(recipe: Recipe, run_dir: Path, ds_config: dict, resume_tag: str | None = None) -> str:
    """Run on every rank (dist already initialised). Returns 'done' or 'stopped'."""
    from lsa_ds.curves import draw_curves
    from lsa_ds.export import export_from_engine
    from lsa_ds.model import build_hf_config, build_model

    rank, world = dist.get_rank(), dist.get_world_size()
    cache = open_cache(recipe.data)
    tok = cache.tokenizer
    hf_config = build_hf_config(recipe, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)
    steps = total_steps(recipe, world)
    lm = build_model(recipe, hf_config, ds_config)
    engine = Engine(recipe, ds_config, lm, steps)
    _record_run(run_dir, lm, hf_config, cache, world, steps)

    loader = window_loader(recipe, cache, rank, world)
    start, skipped_total = 0, 0
    if resume_tag:
        universal = bool(ds_config.get("checkpoint", {}).get("load_universal"))
        client = checkpoint.load(engine, run_dir / "checkpoints", resume_tag, universal)
        start, skipped_total = client["step"], client.get("skipped_steps", 0)
        loader.load_state_dict({"consumed_samples": client["consumed_samples"]})
        if rank == 0:
            print(f"resumed from {resume_tag}: step {start}, {client['consumed_samples']} samples consumed"
                  + (f" (written by {client['world_size']} ranks, now {world})" if universal else ""))

    log = MetricsLog(run_dir, steps, start, rank == 0)
    stop = StopFlag()
    lengths = eval_lengths(recipe)
    nan_steps = {int(s) for s in os.environ.get(NAN_TEST_HOOK, "").split(",") if s}
    skipped_in_row, ema, step = 0, None, start
    last_saved = start if resume_tag else None

    def save(at: int) -> None:
        nonlocal last_saved
        if last_saved != at:
            checkpoint.save(engine, run_dir, recipe, at, loader.consumed_samples, {"skipped_steps": skipped_total})
            last_saved = at

    try:
        die = os.environ.get(DIE_TEST_HOOK, "").split(":")
        for step in range(start + 1, steps + 1):
            if die == [str(rank), str(step)]:
                os.kill(os.getpid(), signal.SIGKILL)
            batch = loader.next_step()
            micro = [micro_views(recipe, ids, w) for ids, w in batch]
            a = recipe.align
            apply_div = a.enabled and a.alpha > 0 and step % a.every == 0
            stats = engine.train_step(micro, apply_divergence=apply_div, poison=step in nan_steps)
            log.advance()
            finite = math.isfinite(stats.loss) and (stats.grad_norm is None or math.isfinite(stats.grad_norm))
            row = {"step": step, "loss": stats.loss, "ce": stats.ce, "misalign": stats.misalign,
                   "misalign_sce": stats.misalign_sce, "misalign_skl": stats.misalign_skl, "ce_gap": stats.ce_gap,
                   **({"divergence_applied": apply_div} if a.enabled else {}), "lr": stats.lr,
                   "grad_norm": stats.grad_norm, "tokens_per_s": stats.tokens / stats.step_time,
                   "step_time": stats.step_time, "consumed_samples": loader.consumed_samples,
                   "peak_mem_mb": peak_memory_mb(), "sample_ids": [ids for ids, _ in batch] if rank == 0 else None}
            if not finite:
                skipped_total += 1
                skipped_in_row += 1
                log.write({**row, "skipped": True, "skipped_steps": skipped_total})
                log.note(f"step {step} skipped: non-finite loss or gradient norm ({skipped_total} so far)")
                if skipped_in_row >= recipe.train.max_skipped_steps:
                    raise TrainingAborted(f"{skipped_in_row} steps in a row had a non-finite loss or gradient norm "
                                          f"(last at step {step}); stopping with the last good checkpoint kept")
            else:
                skipped_in_row = 0
                if ema is not None and stats.loss > 1.5 * ema:
                    row["spike"] = True
                    log.note(f"loss spike at step {step}: {stats.loss:.3f} vs recent {ema:.3f}")
                ema = stats.loss if ema is None else 0.9 * ema + 0.1 * stats.loss
                if step % recipe.run.log_every == 0 or step == steps or row.get("spike"):
                    log.write(row)
            every = recipe.eval.every_steps
            if step == steps or (every and step % every == 0):
                log.write({"kind": "eval", "step": step, **evaluate(engine, recipe, cache, lengths, rank, world)})
            if recipe.checkpoint.every_steps and step % recipe.checkpoint.every_steps == 0:
                save(step)
            if stop.agreed():
                save(step)
                status = "stopped"
                break
        else:
            save(steps)
            export_from_engine(engine, lm, hf_config, cache.tokenizer, run_dir / "hf")
            status = "done"
    finally:
        log.close()
    if rank == 0:
        draw_curves(run_dir)
        if status == "stopped":
            print(f"stopped by signal at step {step}; checkpoint saved, resume with --resume")
        else:
            print(f"done: {steps} steps; model exported to {run_dir / 'hf'}; curves in {run_dir / 'curves.png'}")
    return status
