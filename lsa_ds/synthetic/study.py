"""Run the grid of (task, positional encoding, seed) trainings, spread over worker processes.

Each run is a ~100k-parameter model on sequences of <= 51 tokens: far too small for intra-op
threading to pay (on the 2-core calibration machine, 2 torch threads made a matmul *slower* than 1
while anything else ran). So the study uses N single-threaded worker processes instead of one
N-threaded process; runs are independent and seeded, so the result does not depend on N.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch

from lsa_ds.synthetic.train import RunResult, StudySettings, run_one


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    task: str
    pe: str
    seed: int


def grid(tasks: list[str], pes: list[str], seeds: list[int]) -> list[RunSpec]:
    """Every (task, pe, seed), in report order."""
    return [RunSpec(task, pe, seed) for pe in pes for task in tasks for seed in seeds]


def _single_thread_worker() -> None:
    torch.set_num_threads(1)


def _run_spec(spec: RunSpec, settings: StudySettings) -> RunResult:
    return run_one(spec.task, spec.pe, spec.seed, settings)


def run_grid(
    specs: list[RunSpec],
    settings: StudySettings,
    workers: int,
    on_result: Callable[[RunResult], None] = lambda result: None,
) -> list[RunResult]:
    """Train and evaluate every spec on `workers` single-threaded processes (1: in this process).

    `on_result` is called as each run finishes (for progress); results come back in `specs` order.
    """
    if workers <= 1 or len(specs) <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results = []
            for spec in specs:
                results.append(_run_spec(spec, settings))
                on_result(results[-1])
            return results
        finally:
            torch.set_num_threads(previous)
    # spawn, not fork: forking a process whose OpenMP pool is already up can deadlock the child.
    context = multiprocessing.get_context("spawn")
    by_spec: dict[RunSpec, RunResult] = {}
    with ProcessPoolExecutor(min(workers, len(specs)), context, initializer=_single_thread_worker) as pool:
        futures = {pool.submit(_run_spec, spec, settings): spec for spec in specs}
        for future in as_completed(futures):
            by_spec[futures[future]] = future.result()
            on_result(by_spec[futures[future]])
    return [by_spec[spec] for spec in specs]
