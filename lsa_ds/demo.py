"""`lsa demo`: the embedded default end to end — stage 1 base pretraining at L0 = 128 tokens, then
from its export three runs of the same steps and tokens: context extension to 4·L0 = 512 with
linear RoPE ×4 without (the paper's baseline) and with long-short alignment (alpha 0.1), and a
"more steps" control that keeps training at L0. Then held-out loss of every model at L0/2, L0 and
4·L0 on the same final tokens, and an `lsa eval --compare` report with paired differences against
the baseline arm.

Stages already complete (their `hf/` export exists) are skipped, so running it again is cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lsa_ds.cli_help import command_parser
from lsa_ds.config import load_recipe
from lsa_ds.errors import UserError
from lsa_ds.metrics_log import read_rows

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: str
    """File in recipes/."""
    init_from: str | None = None
    """The stage whose export this one continues from."""
    overrides: list[str] = field(default_factory=list)


STAGES = [
    Stage("base", "tiny-cpu.yaml"),
    Stage("extended", "tiny-cpu-extend.yaml", init_from="base"),
    Stage("extended-lsa", "tiny-cpu-extend-lsa.yaml", init_from="base"),
    Stage("more-steps", "tiny-cpu-more.yaml", init_from="base"),
]
BASELINE = "extended"
"""The arm the others are compared with, window by window."""


def last_eval(run_dir: Path) -> dict:
    """The final evaluation row of a run's metrics.jsonl."""
    evals = [r for r in read_rows(run_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    if not evals:
        raise UserError(f"{run_dir}/metrics.jsonl has no evaluation row")
    return evals[-1]


def run_stages(overrides: list[str], nproc: int | None, stages: list[Stage] = STAGES) -> list[tuple[str, Path, int]]:
    """Train each stage unless complete; returns (stage, run dir, vocab size) in order."""
    from lsa_ds import train_cli

    console = Console()
    done: dict[str, tuple[str, Path, int]] = {}
    for stage in stages:
        extra = [*stage.overrides, *overrides]
        if stage.init_from:  # continue from the earlier stage's export, wherever the runs live
            extra.append(f"model.init_from={done[stage.init_from][1]}")
        recipe = load_recipe(RECIPES / stage.recipe, extra)
        run_dir = recipe.run_dir
        if (run_dir / "hf" / "config.json").is_file():
            console.print(f"[green]stage {stage.name}: already complete[/] ({run_dir}), skipping")
        else:
            console.print(f"[bold]stage {stage.name}[/]: {stage.recipe} -> {run_dir}")
            args = [str(RECIPES / stage.recipe), *[a for o in extra for a in ("--set", o)]]
            if run_dir.exists():
                args.append("--overwrite")  # an unfinished demo stage is restarted from scratch
            if nproc:
                args += ["--nproc", str(nproc)]
            if train_cli.main(args) != 0:
                raise UserError(f"stage {stage.name} failed; see the output above")
        done[stage.name] = (stage.name, run_dir, recipe.data.tokenizer.vocab_size)
    return list(done.values())


def verdicts(rows: dict[str, dict], vocab: int) -> list[tuple[str, bool | None]]:
    """The demo's findings as (line, passed): True/False for its two promises (the base model
    learned; the extended models use context), None for what is reported as measured."""
    lengths = sorted({int(k.split("@")[1]) for row in rows.values() for k in row if k.startswith("loss@")})
    short, mid, long_ = lengths[0], lengths[len(lengths) // 2], lengths[-1]
    loss = {name: {n: row.get(f"loss@{n}", float("nan")) for n in lengths} for name, row in rows.items()}
    base = loss["base"]
    out: list[tuple[str, bool | None]] = [
        (f"base learned: loss @{mid} = {base[mid]:.3f} < 0.6·ln(V) = {0.6 * math.log(vocab):.3f}",
         base[mid] < 0.6 * math.log(vocab))]
    for arm in ("extended", "extended-lsa"):
        if arm in loss:
            gain = loss[arm][short] - loss[arm][long_]
            out.append((f"{arm} uses context: loss @{long_} is {gain:+.3f} nats below its loss @{short} "
                        f"(the same final tokens; wanted ≥ 0.1)", gain >= 0.1))
    out.append((f"base past its length: loss @{long_} − loss @{mid} = {base[long_] - base[mid]:+.3f} "
                f"(flat or rising: it does not use context beyond {mid})", None))
    if "more-steps" in loss and "extended" in loss:
        out.append((f"more steps at @{mid} instead of extension: loss @{long_} {loss['more-steps'][long_]:.3f} vs "
                    f"extended {loss['extended'][long_]:.3f}; at @{mid} {loss['more-steps'][mid]:.3f} vs "
                    f"{loss['extended'][mid]:.3f} (what extension adds beyond training longer)", None))
    if "extended-lsa" in rows and "extended" in rows:
        lsa, ref = rows["extended-lsa"], rows["extended"]
        out.append((f"alignment (alpha 0.1) vs baseline: loss @{long_} {loss['extended-lsa'][long_] - loss['extended'][long_]:+.3f}, "
                    f"held-out symmetric KL {lsa.get('misalign_skl', float('nan')):.4f} vs {ref.get('misalign_skl', float('nan')):.4f}, "
                    f"SCE {lsa.get('misalign_sce', float('nan')):.3f} vs {ref.get('misalign_sce', float('nan')):.3f} "
                    f"(as measured; paired intervals in the report)", None))
    return out


def summarise(stages: list[tuple[str, Path, int]]) -> tuple[bool, list[str]]:
    """Print held-out loss and misalignment per model (the last in-training evaluation, measured as
    `lsa eval` does) and the verdict lines; returns (promises kept, verdict lines)."""
    console = Console()
    rows = {stage: last_eval(run_dir) for stage, run_dir, _ in stages}
    lengths = sorted({int(k.split("@")[1]) for row in rows.values() for k in row if k.startswith("loss@")})
    table = Table(title="held-out loss of the same final tokens by context length (stdlib eval split)")
    table.add_column("model")
    for n in lengths:
        table.add_column(f"@{n} tokens", justify="right")
    table.add_column("misalign SKL", justify="right")
    table.add_column("misalign SCE", justify="right")
    for stage, row in rows.items():
        table.add_row(stage, *[f"{row.get(f'loss@{n}', float('nan')):.3f}" for n in lengths],
                      f"{row.get('misalign_skl', float('nan')):.4f}", f"{row.get('misalign_sce', float('nan')):.3f}")
    console.print(table)
    found = verdicts(rows, stages[0][2])
    lines = []
    for text, ok in found:
        mark = "PASS" if ok else "FAIL" if ok is not None else "NOTE"
        console.print(f"{'[green]' if ok else '[red]' if ok is not None else '[cyan]'}{mark}[/] {text}")
        lines.append(f"- **{mark}** {text}")
    return all(ok is not False for _, ok in found), lines


def compare(stages: list[tuple[str, Path, int]], out: Path) -> None:
    """`lsa eval --compare` of the stages: perplexity vs length, passkey, misalignment, one report.
    Light settings so the demo stays within its time budget on two CPU cores."""
    from lsa_ds.eval import cli as eval_cli

    args = ["--compare", *[str(run) for _, run, _ in stages], "--out", str(out), "--threads", "1", "--no-progress",
            "--baseline", next((run.name for name, run, _ in stages if name == BASELINE), stages[0][1].name),
            "--length-multipliers", "0.5,1,2,4", "--passkey-samples", "2", "--passkey-depths", "0,0.5,1",
            "--misalign-samples", "32"]
    if eval_cli.main(args) != 0:
        raise UserError("the demo's evaluation failed; see the output above")


def main(argv: list[str]) -> int:
    p = command_parser("demo", __doc__.split("\n\n")[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in every stage, e.g. --set train.max_steps=2 (repeatable)")
    p.add_argument("--nproc", type=int, default=None, help="ranks (default 2 on CPU)")
    p.add_argument("--no-eval", action="store_true", help="skip the final `lsa eval --compare` report")
    args = p.parse_args(argv)
    stages = run_stages(args.overrides, args.nproc)
    ok, lines = summarise(stages)
    if not args.no_eval:
        out = stages[-1][1].parent / "demo-eval"
        compare(stages, out)
        report = out / "report.md"
        report.write_text(report.read_text() + "\n## The demo's verdict\n\nFrom each run's last in-training "
                          "evaluation (the same windows and final tokens as above).\n\n" + "\n".join(lines) + "\n")
        Console().print(f"evaluation report: {report} (plots beside it)")
    return 0 if ok else 1
