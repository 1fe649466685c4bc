"""`lsa demo`: the embedded default end to end — stage 1 base pretraining at 128 tokens, stage 2
context extension to 512 with linear RoPE, then held-out loss of both models at both lengths and
an `lsa eval --compare` report of base versus extended model.

Stages already complete (their `hf/` export exists) are skipped, so running it again is cheap.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lsa_ds.cli_help import command_parser
from lsa_ds.config import load_recipe
from lsa_ds.errors import UserError
from lsa_ds.metrics_log import read_rows

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
STAGES = [("base", "tiny-cpu.yaml"), ("extended", "tiny-cpu-extend.yaml")]


def last_eval(run_dir: Path) -> dict:
    """The final evaluation row of a run's metrics.jsonl."""
    evals = [r for r in read_rows(run_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    if not evals:
        raise UserError(f"{run_dir}/metrics.jsonl has no evaluation row")
    return evals[-1]


def run_stages(overrides: list[str], nproc: int | None) -> list[tuple[str, Path, int]]:
    """Train each stage unless complete; returns (stage, run dir, vocab size)."""
    from lsa_ds import train_cli

    console = Console()
    done: list[tuple[str, Path, int]] = []
    for stage, file in STAGES:
        extra = list(overrides)
        if done:  # continue from the previous stage's export, wherever the runs live
            extra.append(f"model.init_from={done[-1][1]}")
        recipe = load_recipe(RECIPES / file, extra)
        run_dir = recipe.run_dir
        if (run_dir / "hf" / "config.json").is_file():
            console.print(f"[green]stage {stage}: already complete[/] ({run_dir}), skipping")
        else:
            console.print(f"[bold]stage {stage}[/]: {file} -> {run_dir}")
            args = [str(RECIPES / file), *[a for o in extra for a in ("--set", o)]]
            if run_dir.exists():
                args.append("--overwrite")  # an unfinished demo stage is restarted from scratch
            if nproc:
                args += ["--nproc", str(nproc)]
            if train_cli.main(args) != 0:
                raise UserError(f"stage {stage} failed; see the output above")
        done.append((stage, run_dir, recipe.data.tokenizer.vocab_size))
    return done


def summarise(stages: list[tuple[str, Path, int]]) -> bool:
    """Print held-out loss per model and length; check the demo's two promises."""
    console = Console()
    rows = {stage: last_eval(run_dir) for stage, run_dir, _ in stages}
    lengths = sorted({int(k.split("@")[1]) for row in rows.values() for k in row if k.startswith("loss@")})
    table = Table(title="held-out loss (stdlib corpus, eval split)")
    table.add_column("model")
    for n in lengths:
        table.add_column(f"@{n} tokens", justify="right")
    for stage, row in rows.items():
        table.add_row(stage, *[f"{row.get(f'loss@{n}', float('nan')):.3f}" for n in lengths])
    console.print(table)
    base, ext = rows["base"], rows["extended"]
    vocab = stages[0][2]
    short, long_ = min(lengths), max(lengths)
    checks = [
        (f"base loss @{short} < 0.6·ln(V) = {0.6 * math.log(vocab):.3f}", base[f"loss@{short}"] < 0.6 * math.log(vocab)),
        (f"extended loss @{long_} < base loss @{long_}", ext[f"loss@{long_}"] < base[f"loss@{long_}"]),
    ]
    for text, ok in checks:
        console.print(f"{'[green]PASS' if ok else '[red]FAIL'}[/] {text}")
    return all(ok for _, ok in checks)


def compare(stages: list[tuple[str, Path, int]], out: Path) -> None:
    """`lsa eval --compare` of the stages: perplexity vs length, passkey, misalignment, one report.
    Light settings so the demo stays within its time budget on two CPU cores."""
    from lsa_ds.eval import cli as eval_cli

    args = ["--compare", *[str(run) for _, run, _ in stages], "--out", str(out), "--threads", "1", "--no-progress",
            "--length-multipliers", "0.5,1,2,4", "--passkey-samples", "2", "--passkey-depths", "0,0.5,1",
            "--misalign-samples", "32"]
    if eval_cli.main(args) != 0:
        raise UserError("the demo's evaluation failed; see the output above")


def main(argv: list[str]) -> int:
    p = command_parser("demo", __doc__.split("\n\n")[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in both stages, e.g. --set train.max_steps=2 (repeatable)")
    p.add_argument("--nproc", type=int, default=None, help="ranks (default 2 on CPU)")
    p.add_argument("--no-eval", action="store_true", help="skip the final `lsa eval --compare` report")
    args = p.parse_args(argv)
    stages = run_stages(args.overrides, args.nproc)
    ok = summarise(stages)
    if not args.no_eval:
        out = stages[-1][1].parent / "demo-eval"
        compare(stages, out)
        Console().print(f"evaluation report: {out / 'report.md'} (plots beside it)")
    return 0 if ok else 1
