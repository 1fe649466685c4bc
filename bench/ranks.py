"""A benchmark's ranks: starting them (the script itself, once per rank, through the deepspeed
launcher) and timing their steps the same way in every benchmark."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lsa_ds.train.distributed import free_port


def launch_command(script: str, nproc: int, args: list[str], result: Path,
                   env: dict[str, str | None] | None = None) -> tuple[list[str], dict[str, str], int]:
    """(command, environment, master port) that runs `script --rank ARGS --result RESULT` on `nproc`
    CPU ranks (1 thread each) through the deepspeed launcher. `env` adds variables to the
    environment (None removes one)."""
    port = free_port()
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--no_local_rank",
           "--master_port", str(port), script, "--rank", *args, "--result", str(result)]
    full = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return cmd, full, port


def run_ranks(script: str, nproc: int, args: list[str], result: Path, env: dict[str, str | None] | None = None) -> dict:
    """Run `script --rank ARGS --result RESULT` on `nproc` CPU ranks (`launch_command`) and return
    the JSON rank 0 wrote to `result`."""
    result.unlink(missing_ok=True)
    cmd, full, _ = launch_command(script, nproc, args, result, env)
    subprocess.run(cmd, env=full, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(result.read_text())


def status_mib(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))


def engine_inputs(overrides: str, steps: int):
    """In a rank of an `Engine.train_step` benchmark: join the group, resolve the recipe from its
    JSON list of overrides, its DeepSpeed config and HF config, import the modeling modules (on the
    meta device: they belong to the runtime's base, not to the model), and draw `steps` random
    windows with their views (one RNG per rank; the ranks of an SP group share it). Returns (rank,
    world, recipe, ds_config, hf_config, views)."""
    import numpy as np  # deferred, as in timed_steps: the launching side never imports torch
    import torch
    import transformers

    from lsa_ds.align.views import draw_shifts, make_views
    from lsa_ds.model.config import build_hf_config
    from lsa_ds.recipe import load_recipe
    from lsa_ds.recipe.ds_config import resolve_ds_config
    from lsa_ds.train.distributed import init_distributed

    rank, world = init_distributed()
    recipe = load_recipe(None, json.loads(overrides))
    ds_config = resolve_ds_config(recipe, world)
    hf_config = build_hf_config(recipe, recipe.data.tokenizer.vocab_size, 1, 2, None)
    with torch.device("meta"):
        transformers.AutoModelForCausalLM.from_config(hf_config)
    rng = np.random.default_rng(rank // recipe.train.sequence_parallel)
    views = []
    for _ in range(steps):
        window = rng.integers(0, hf_config.vocab_size, size=(1, recipe.window_tokens))
        shifts = draw_shifts([int(rng.integers(1 << 30))], 0, 1, recipe.shift_max)
        views.append(make_views(window, recipe.train.seq_len, shifts if recipe.align.enabled else None))
    return rank, world, recipe, ds_config, hf_config, views


WARMUP_STEPS = 2
"""Steps left out of the medians: the first ones pay for allocations and lazy initialisation."""


def timed_steps(step: Callable[[], None], steps: int) -> dict:
    """Run `step` `steps` times on every rank (collective) and measure each: wall time between
    barriers, so a step lasts until the slower rank finishes it, and CPU seconds of all ranks
    together (read before the closing barrier: waiting for the slower rank is not work). Returns
    medians over the steps after WARMUP_STEPS (`step_s`, `cpu_s`), every step's figures, and the
    largest peak resident set of any rank (`peak_rss_mb`)."""
    import torch  # deferred: the launching side of a benchmark never imports torch
    import torch.distributed as dist

    times, cpu = [], []
    for _ in range(steps):
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        c1 = time.process_time()
        dist.barrier()
        times.append(time.perf_counter() - t0)
        cpu.append(c1 - c0)
    rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0])
    dist.all_reduce(rss, op=dist.ReduceOp.MAX)
    cpu_all = torch.tensor(cpu, dtype=torch.float64)
    dist.all_reduce(cpu_all)  # CPU seconds of all ranks per step
    median = lambda xs: statistics.median(xs[WARMUP_STEPS:] or xs)  # noqa: E731
    return {"step_s": median(times), "all_step_s": times, "cpu_s": median(cpu_all.tolist()),
            "all_cpu_s": cpu_all.tolist(), "peak_rss_mb": rss.item()}
