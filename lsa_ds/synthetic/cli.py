"""`lsa synth`: the paper's synthetic length-generalisation study (§3, Figure 1) on a laptop.

    lsa synth                                   # all tasks, RoPE, 3 seeds -> runs/synth/
    lsa synth --task mean --task length --pe rope --pe nope --seeds 5 --out runs/synth-nope

Writes results.json (every run's MSE at every length), table.md (task × length bucket,
mean ± std over seeds, exact constant baselines, reparameterisation ratios) and
mse_vs_length.png under --out, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from lsa_ds.cli_help import command_parser
from lsa_ds.errors import UserError
from lsa_ds.synthetic import report
from lsa_ds.synthetic.model import POSITIONAL_ENCODINGS
from lsa_ds.synthetic.study import grid, run_grid
from lsa_ds.synthetic.tasks import TASKS
from lsa_ds.synthetic.train import RunResult, StudySettings

DEFAULTS = StudySettings()


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as a UserError (one line, exit 2) instead of sys.exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"lsa synth: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("synth", __doc__.split("\n\n")[0].split(": ", 1)[1], cls=_Parser)
    parser.add_argument(
        "--task",
        action="append",
        metavar="TASK",
        help=f"repeatable; one of {', '.join(TASKS)}, or all (default: all)",
    )
    parser.add_argument(
        "--pe",
        action="append",
        metavar="PE",
        help=f"positional encoding, repeatable; one of {', '.join(POSITIONAL_ENCODINGS)} (default: rope)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per (task, pe): 0..N-1 (default: 3)")
    for flag, field, what in (
        ("--steps", "steps", "Adam steps per run"),
        ("--batch-size", "batch_size", "training examples per step"),
        ("--eval-samples", "eval_samples", "test examples per length"),
    ):
        default = getattr(DEFAULTS, field)
        parser.add_argument(flag, type=int, default=default, help=f"{what} (default: {default})")
    parser.add_argument("--out", type=Path, default=Path("runs/synth"), help="output directory (default: runs/synth)")
    parser.add_argument(
        "--threads",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="CPU cores to use, as that many single-threaded worker processes (default: min(2, cores))",
    )
    return parser


def _choices(values: list[str] | None, allowed: tuple[str, ...], default: list[str], flag: str) -> list[str]:
    """Validated, de-duplicated, in canonical order; `all` expands to every allowed value."""
    chosen = set(default if not values else values)
    if "all" in chosen:
        chosen = set(allowed)
    unknown = sorted(chosen - set(allowed))
    if unknown:
        raise UserError(f"lsa synth: unknown {flag} {unknown[0]!r}; expected one of {', '.join(allowed)}, or all")
    return [value for value in allowed if value in chosen]


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise UserError(f"lsa synth: {name} must be >= 1, got {value}")
    return value


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    task_list = _choices(args.task, TASKS, list(TASKS), "--task")
    pe_list = _choices(args.pe, POSITIONAL_ENCODINGS, ["rope"], "--pe")
    seeds = list(range(_positive("--seeds", args.seeds)))
    threads = _positive("--threads", args.threads)
    settings = StudySettings(
        steps=_positive("--steps", args.steps),
        batch_size=_positive("--batch-size", args.batch_size),
        eval_samples=_positive("--eval-samples", args.eval_samples),
    )
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"lsa synth: cannot create --out {str(out)!r}: {e.strerror}") from None

    specs = grid(task_list, pe_list, seeds)
    workers = min(threads, len(specs))
    print(
        f"lsa synth: {len(specs)} runs ({len(task_list)} tasks × {len(pe_list)} pe × {len(seeds)} seeds), "
        f"{settings.steps} steps each, on {workers} worker process(es)",
        flush=True,
    )
    done: list[RunResult] = []

    def progress(result: RunResult) -> None:
        done.append(result)
        print(
            f"  [{len(done)}/{len(specs)}] {result.task:<15} {result.pe:<7} seed {result.seed}: "
            f"MSE at n={settings.test_max_len} {result.mse_by_length[-1]:.3g}, "
            f"train loss {result.final_train_loss:.2g} ({result.seconds:.0f} s)",
            flush=True,
        )

    started = time.perf_counter()
    results = run_grid(specs, settings, workers=workers, on_result=progress)
    wall_seconds = time.perf_counter() - started

    rows = report.summarise(results, settings)
    ratios = report.reparam_ratios(rows)
    payload = {
        "command": ["lsa", "synth", *argv],
        "settings": asdict(settings) | {"seeds": seeds, "tasks": task_list, "pes": pe_list, "workers": workers},
        "wall_seconds": wall_seconds,
        "environment": {"torch": torch.__version__, "python": sys.version.split()[0], "cpus": os.cpu_count(),
                        "machine": platform.machine()},
        "runs": [result.to_json() for result in results],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    table = report.markdown_table(rows, ratios, settings, seeds=len(seeds))
    (out / "table.md").write_text(table + f"\nWall time: {wall_seconds:.0f} s on {workers} worker(s).\n")
    report.plot(results, settings, out / "mse_vs_length.png")
    report.print_rich(rows, ratios, settings)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'mse_vs_length.png'} ({wall_seconds:.0f} s)")
    return 0
