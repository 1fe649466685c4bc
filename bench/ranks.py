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


def run_ranks(script: str, nproc: int, args: list[str], result: Path, env: dict[str, str | None] | None = None) -> dict:
    """Run `script --rank ARGS --result RESULT` on `nproc` CPU ranks (1 thread each) and return the
    JSON rank 0 wrote to `result`. `env` adds variables to the environment (None removes one)."""
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--no_local_rank",
           "--master_port", str(free_port()), script, "--rank", *args, "--result", str(result)]
    full = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    subprocess.run(cmd, env=full, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(result.read_text())


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
