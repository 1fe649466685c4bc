"""The training loop of one rank: data -> engine steps -> logs, evaluation, final HF export.

Run directory (DESIGN.md §3): config.yaml and ds_config.json are written before the ranks start
(by `lsa train`); this loop appends metrics.jsonl, writes tb/, run.json (what was built: RoPE,
parameter counts, world size) and, at the end, hf/ (consolidated weights, config, tokenizer),
renamed into place only when complete — hf/ existing means the run finished.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lsa_ds.config import Recipe
from lsa_ds.data import build_windows, open_cache
from lsa_ds.data.views import make_views
from lsa_ds.data.windows import WindowLoader
from lsa_ds.engine import Engine, peak_memory_mb
from lsa_ds.errors import UserError


def total_steps(recipe: Recipe, world: int) -> int:
    t = recipe.train
    if t.max_steps:
        return t.max_steps
    if t.token_budget:
        return max(1, math.ceil(t.token_budget / (t.micro_batch_size * t.grad_accum * world * t.seq_len)))
    raise UserError("train.max_steps or train.token_budget must be set")


class MetricsLog:
    """Rank 0's metrics: metrics.jsonl (one object per row), TensorBoard scalars, a progress bar."""

    def __init__(self, run_dir: Path, steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)
        self.tb = SummaryWriter(str(run_dir / "tb"))
        self.bar = tqdm(total=steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        prefix = "eval/" if row.get("kind") == "eval" else "train/"
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "step":
                self.tb.add_scalar(prefix + k, v, row["step"])
        if row.get("kind") == "eval":
            self.bar.write("eval step {step}: ".format(**row) + ", ".join(
                f"{k} {v:.4f}" for k, v in row.items() if k.startswith("loss@")))
        else:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")

    def advance(self) -> None:
        if self.enabled:
            self.bar.update(1)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.tb.close()
            self.file.close()


def evaluate(engine: Engine, recipe: Recipe, cache, lengths: list[int], rank: int, world: int) -> dict:
    """Held-out mean CE at each length over `eval.batches` micro-batches per rank."""
    out = {}
    mbs = recipe.train.micro_batch_size
    for length in lengths:
        windows = build_windows(recipe, cache, "eval", window=length + 1)
        batches = []
        for b in range(recipe.eval.batches):
            ids = [(b * mbs + k) * world + rank for k in range(mbs)]
            w = np.stack([windows[i] for i in ids])
            batches.append(make_views(w, length))
        loss, _ = engine.eval_loss(batches)
        out[f"loss@{length}"] = loss
    return out


def export_hf(engine: Engine, lm, cache, run_dir: Path, rank: int) -> None:
    """Write hf/ (safetensors weights, config with the effective RoPE, tokenizer) atomically."""
    state = engine.consolidated_state_dict()  # collective: every rank takes part
    if rank == 0:
        tmp = run_dir / ".hf.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        lm.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tok = cache.tokenizer
        if tok.kind == "sentencepiece":
            shutil.copy(tok.path, tmp / "tokenizer.model")
        else:
            tok.impl.save_pretrained(tmp)
        (tmp / "lsa_tokenizer.json").write_text(json.dumps(tok.describe(), indent=2))
        os.replace(tmp, run_dir / "hf")
    dist.barrier()


def train(recipe: Recipe, run_dir: Path, ds_config: dict) -> None:
    """Run on every rank (dist already initialised)."""
    from lsa_ds.model import build_hf_config, build_model, count_params, local_param_numel, rope_summary

    rank, world = dist.get_rank(), dist.get_world_size()
    cache = open_cache(recipe.data)
    tok = cache.tokenizer
    hf_config = build_hf_config(recipe, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)
    steps = total_steps(recipe, world)
    lm = build_model(recipe, hf_config, ds_config)
    engine = Engine(recipe, ds_config, lm, steps)
    held = torch.tensor([local_param_numel(lm)], dtype=torch.float64)
    per_rank = [torch.zeros_like(held) for _ in range(world)]
    dist.all_gather(per_rank, held)
    if rank == 0:
        info = {"world_size": world, "steps": steps, "params": count_params(lm), "rope": rope_summary(hf_config),
                "params_per_rank": [int(t.item()) for t in per_rank], "torch": torch.__version__,
                "token_cache": str(cache.folder), "vocab_size": tok.vocab_size}
        (run_dir / "run.json").write_text(json.dumps(info, indent=2))

    loader = WindowLoader(build_windows(recipe, cache), recipe.train.micro_batch_size, recipe.train.grad_accum, rank, world)
    log = MetricsLog(run_dir, steps, 0, rank == 0)
    lengths = recipe.eval.lengths or [recipe.train.seq_len]
    L = recipe.train.seq_len
    t_start = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            micro = [make_views(w, L) for _, w in loader.next_step()]
            stats = engine.train_step(micro)
            log.advance()
            if step % recipe.run.log_every == 0 or step == steps:
                log.write({"step": step, "loss": stats.loss, "ce": stats.ce, "misalign": None, "misalign_skl": None,
                           "lr": stats.lr, "grad_norm": stats.grad_norm, "tokens_per_s": stats.tokens / stats.step_time,
                           "step_time": stats.step_time, "consumed_samples": loader.consumed_samples,
                           "peak_mem_mb": peak_memory_mb()})
            every = recipe.eval.every_steps
            if step == steps or (every and step % every == 0):
                log.write({"kind": "eval", "step": step, **evaluate(engine, recipe, cache, lengths, rank, world)})
        export_hf(engine, lm, cache, run_dir, rank)
    finally:
        log.close()
    if rank == 0:
        print(f"done: {steps} steps in {time.perf_counter() - t_start:.0f} s; model exported to {run_dir / 'hf'}")
