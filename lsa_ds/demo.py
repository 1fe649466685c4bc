"""`lsa demo`: the embedded default end to end — from the base model of stage 1 (pretrained at
L0 = 128 tokens: the committed demo/tiny-cpu-base, or trained again with --from-scratch), four runs
of the same steps and tokens: context extension to 4·L0 = 512 with linear RoPE ×4 without (the
paper's baseline) and with long-short alignment (alpha 0.1), the same with both views at alpha 0,
and a "more steps" control that keeps training at L0. Then held-out loss of every model at L0/2, L0
and 4·L0 on the same final tokens, and an `lsa eval --compare` report with paired differences
against the baseline arm.

Stages already complete (their `hf/` export exists and their recipe is the one asked for) are
skipped, so running it again is cheap.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from lsa_ds.cli_help import command_parser
from lsa_ds.cli_help import console as cli_console
from lsa_ds.errors import UserError
from lsa_ds.eval import cli as eval_cli
from lsa_ds.eval.perplexity import default_score_tokens
from lsa_ds.recipe import load_recipe, recipe_changes
from lsa_ds.recipe.shipped import DEMO_BASE, RECIPES
from lsa_ds.rundir.metrics import length_keys, read_rows, source_losses
from lsa_ds.train import cli as train_cli
from lsa_ds.train.evaluation import eval_lengths

COMMITTED_BASE = DEMO_BASE
"""Stage 1 as `lsa demo --from-scratch` trains it (recipes/tiny-cpu.yaml; its log and curves
beside it): the copy mechanism it needs forms only after ~5000 steps, beyond the demo's budget."""


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: str
    """File in recipes/."""
    init_from: str | None = None
    """The stage whose export this one continues from."""
    overrides: list[str] = field(default_factory=list)
    nproc: int | None = None
    """Ranks this stage trains on whatever --nproc says (its recipe's batch is per rank)."""


STAGES = [
    Stage("base", "tiny-cpu.yaml", nproc=1),
    Stage("extended", "tiny-cpu-extend.yaml", init_from="base"),
    Stage("extended-lsa", "tiny-cpu-extend-lsa.yaml", init_from="base"),
    Stage("extended-alpha0", "tiny-cpu-extend-alpha0.yaml", init_from="base"),
    Stage("more-steps", "tiny-cpu-more.yaml", init_from="base"),
]
ARMS = ("extended", "extended-lsa", "extended-alpha0")
"""The stages that extend the context (the verdict's "uses context" lines)."""
BASELINE = "extended"
"""The arm the others are compared with, window by window."""


def last_eval(run_dir: Path) -> dict:
    """The final evaluation row of a run's metrics.jsonl."""
    evals = [r for r in read_rows(run_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    if not evals:
        raise UserError(f"{run_dir}/metrics.jsonl has no evaluation row")
    return evals[-1]


def _committed_base() -> tuple[Path, int]:
    """The committed stage-1 run and its vocabulary size, or a UserError saying how to get one."""

    cfg = COMMITTED_BASE / "hf" / "config.json"
    if not cfg.is_file():
        raise UserError(f"{COMMITTED_BASE}: the committed base model is missing (no hf/config.json); "
                        "run `lsa demo --from-scratch` to train it")
    return COMMITTED_BASE, int(json.loads(cfg.read_text())["vocab_size"])


def _changed_key(run_dir: Path, recipe) -> str | None:
    """None when the finished run in `run_dir` was trained from `recipe`; else the first key that
    differs (a base trained anew changes every arm's init_from, for example)."""
    try:
        had = load_recipe(run_dir / "config.yaml")
    except UserError:
        return "config.yaml"
    changes = recipe_changes(had, recipe)
    return changes[0].key if changes else None


def run_stages(overrides: list[str], nproc: int | None, stages: list[Stage] = STAGES,
               from_scratch: bool = False) -> list[tuple[str, Path, int]]:
    """Train each stage unless complete; returns (stage, run dir, vocab size) in order. Without
    `from_scratch` the base stage is the committed demo/tiny-cpu-base."""

    console = cli_console()
    done: dict[str, tuple[str, Path, int]] = {}
    for stage in stages:
        if stage.init_from is None and not from_scratch:
            run_dir, vocab = _committed_base()
            console.print(f"[green]stage {stage.name}: the committed base model[/] ({run_dir}: recipes/{stage.recipe}, "
                          "trained by `lsa demo --from-scratch`)")
            done[stage.name] = (stage.name, run_dir, vocab)
            continue
        extra = [*stage.overrides, *overrides]
        if stage.init_from:  # continue from the earlier stage's export and read text with its tokenizer
            base = done[stage.init_from][1]
            extra += [f"model.init_from={base}", f"data.tokenizer.path={base / 'hf' / 'tokenizer.model'}"]
        recipe = load_recipe(RECIPES / stage.recipe, extra)
        run_dir = recipe.run_dir
        finished = (run_dir / "hf" / "config.json").is_file()
        changed = finished and _changed_key(run_dir, recipe)
        if finished and not changed:
            console.print(f"[green]stage {stage.name}: already complete[/] ({run_dir}), skipping")
        else:
            why = f" (its recipe changed: {changed})" if changed else ""
            console.print(f"[bold]stage {stage.name}[/]: {stage.recipe} -> {run_dir}{why}")
            args = [str(RECIPES / stage.recipe), *[a for o in extra for a in ("--set", o)]]
            if run_dir.exists():
                args.append("--overwrite")  # an unfinished or outdated demo stage is trained again from scratch
            if stage.nproc or nproc:
                args += ["--nproc", str(stage.nproc or nproc)]
            if train_cli.main(args) != 0:
                raise UserError(f"stage {stage.name} failed; see the output above")
        done[stage.name] = (stage.name, run_dir, recipe.data.tokenizer.vocab_size if stage.init_from is None
                            else done[stage.init_from][2])
    return list(done.values())


def curves(row: dict) -> dict[str, dict[int, float]]:
    """{held-out data: {length: loss}} of an eval row: "all" (sources blended by weight) and, with
    several sources, each source's own held-out text."""
    return {"all": length_keys(row), **source_losses(row)}


def verdicts(rows: dict[str, dict], vocab: int, long_range: str, natural: str = "all") -> list[tuple[str, str]]:
    """The demo's findings as (line, mark): PASS/FAIL for its promise that the base model learned
    (FAIL means something is broken), PASS/MISS for its aim that the extended models use context
    on `long_range` (the held-out data that measures long-range use), NOTE for what is reported
    as measured. Comparisons across stages use `natural`, the held-out text every stage shares
    (a repeated-span source differs between stages: its segments follow each stage's length)."""
    loss = {name: curves(row) for name, row in rows.items()}
    lengths = sorted(loss["base"]["all"])
    short, mid, long_ = lengths[0], lengths[len(lengths) // 2], lengths[-1]
    nan = float("nan")
    get = lambda name, data, n: loss.get(name, {}).get(data, {}).get(n, nan)  # noqa: E731
    others = [d for d in loss["base"] if d not in ("all", long_range)]
    out: list[tuple[str, str]] = [
        (f"base learned: loss @{mid} = {get('base', 'all', mid):.3f} < 0.6·ln(V) = {0.6 * math.log(vocab):.3f}",
         "PASS" if get("base", "all", mid) < 0.6 * math.log(vocab) else "FAIL")]
    for arm in ARMS:
        if arm in loss:
            gain = get(arm, long_range, short) - get(arm, long_range, long_)
            beside = "; ".join(f"on {d}: {get(arm, d, short) - get(arm, d, long_):+.3f}" for d in others)
            out.append((f"{arm} uses context: on {long_range} held-out data its loss @{long_} is {gain:+.3f} nats "
                        f"below its loss @{short} (the same final tokens; the aim is ≥ 0.1)"
                        f"{'; ' + beside if beside else ''}", "PASS" if gain >= 0.1 else "MISS"))
    out.append((f"base past its length: loss @{long_} − loss @{mid} on {natural} = "
                f"{get('base', natural, long_) - get('base', natural, mid):+.3f} (it was trained at {mid})", "NOTE"))
    if "more-steps" in loss and "extended" in loss:
        out.append((f"more steps at {mid} instead of extension ({natural}): loss @{long_} "
                    f"{get('more-steps', natural, long_):.3f} vs extended {get('extended', natural, long_):.3f}; "
                    f"@{mid} {get('more-steps', natural, mid):.3f} vs {get('extended', natural, mid):.3f} "
                    f"(what extension adds beyond training as long)", "NOTE"))
    for arm, what in (("extended-lsa", "alignment (alpha 0.1)"), ("extended-alpha0", "both views, alpha 0")):
        if arm in rows and "extended" in rows:
            mine, ref = rows[arm], rows["extended"]
            out.append((f"{what} vs baseline: loss @{long_} on {long_range} "
                        f"{get(arm, long_range, long_) - get('extended', long_range, long_):+.3f}; held-out "
                        f"symmetric KL {mine.get('misalign_skl', nan):.4f} vs {ref.get('misalign_skl', nan):.4f}, "
                        f"SCE {mine.get('misalign_sce', nan):.3f} vs {ref.get('misalign_sce', nan):.3f}, entropy "
                        f"{mine.get('misalign_entropy', nan):.3f} vs {ref.get('misalign_entropy', nan):.3f} "
                        f"(as measured; paired intervals over windows in the report)", "NOTE"))
    return out


def in_training_windows(run_dir: Path) -> str:
    """Which windows a run's in-training evaluation read, in words (its numbers differ from a
    report that reads longer windows)."""
    recipe = load_recipe(run_dir / "config.yaml")
    lengths = eval_lengths(recipe)
    return (f"{recipe.eval.windows} held-out windows of {max(lengths) + 1} tokens, the final "
            f"{default_score_tokens(lengths)} tokens scored")


def paired_lines(report_json: Path, long_range: str) -> list[str]:
    """Verdict lines read from a report's own paired table, one per model against the baseline (loss at
    the baseline's training length, and symmetric KL, with their intervals), so the report's verdict
    equals its table."""
    report = json.loads(report_json.read_text())
    base = report["paired"]["baseline"] if report.get("paired") else None
    at = next((m["train_len"] for m in report["models"] if m["name"] == base), None)
    out = []
    for m in (report.get("paired") or {}).get("models", []):
        rows = {r["metric"]: r for r in m["rows"]}
        losses = sorted((int(k.removeprefix("loss@")), r) for k, r in rows.items() if k.startswith("loss@"))
        skl = rows.get("misalign SKL (last)")
        if not losses:
            continue
        n, r = next(((k, r) for k, r in losses if k == at), losses[-1])
        d = r["diff"]
        text = (f"{m['name']} minus {report['paired']['baseline']} (the paired table above, {long_range}): loss @{n} "
                f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] over {r['better'] + r['worse']} windows")
        if skl:
            s = skl["diff"]
            text += f"; symmetric KL (last) {s['mean']:+.4f} [{s['lo']:+.4f}, {s['hi']:+.4f}]"
        out.append(f"- **NOTE** {text}")
    return out


def summarise(stages: list[tuple[str, Path, int]], long_range: str = "all", natural: str = "all",
              ) -> tuple[bool, list[str]]:
    """Print held-out loss (per held-out data) and misalignment per model, from the last
    in-training evaluation (measured as `lsa eval` does), and the verdict lines; returns
    (nothing FAILed, verdict lines)."""
    console = cli_console()
    rows = {stage: last_eval(run_dir) for stage, run_dir, _ in stages}
    lengths = sorted(curves(rows["base"])["all"])
    console.print("held-out loss of the same final tokens by context length, from each run's last in-training "
                  f"evaluation ({in_training_windows(stages[-1][1])}; each run's own held-out data: natural text is "
                  "the same for all, repeated spans follow each stage's length)")
    table = Table()
    table.add_column("model")
    table.add_column("held-out data")
    for n in lengths:
        table.add_column(f"@{n}", justify="right")
    table.add_column("misalign SKL", justify="right")
    table.add_column("misalign SCE", justify="right")
    for stage, row in rows.items():
        for i, (data, by_len) in enumerate(curves(row).items()):
            mis = [f"{row.get('misalign_skl', float('nan')):.4f}", f"{row.get('misalign_sce', float('nan')):.3f}"]
            table.add_row(stage if i == 0 else "", data, *[f"{by_len.get(n, float('nan')):.3f}" for n in lengths],
                          *(mis if i == 0 else ["", ""]))
    console.print(table)
    found = verdicts(rows, stages[0][2], long_range, natural)
    colour = {"PASS": "green", "FAIL": "red", "MISS": "yellow", "NOTE": "cyan"}
    lines = []
    for text, mark in found:
        console.print(f"[{colour[mark]}]{mark}[/] {text}")
        lines.append(f"- **{mark}** {text}")
    return all(mark != "FAIL" for _, mark in found), lines


def held_out_names(stage: Stage, overrides: list[str]) -> tuple[str, str]:
    """(long-range, natural): the held-out data the context-use aim is judged on (the first source
    with repeated spans: the mixture's held-out part) and the natural text every stage shares (the
    first source without); "all" where a recipe has no such source."""
    recipe = load_recipe(RECIPES / stage.recipe, [*stage.overrides, *overrides])
    sources = recipe.data.sources if len(recipe.data.sources) > 1 else []
    return (next((s.name for s in sources if s.repeat is not None), "all"),
            next((s.name for s in sources if s.repeat is None), "all"))


def compare(stages: list[tuple[str, Path, int]], out: Path, windows: int, data: Path, source: str | None = None,
            tasks: str = "ppl,misalign,passkey,niah,copy,split") -> None:
    """`lsa eval --compare` of the stages on one held-out set (`data`: stage 2's recipe, so base and
    extended models read the same windows; `source`: only that source's held-out text):
    perplexity vs length, passkey, misalignment, paired differences, one report. Light settings so
    the demo stays within its time budget on two cores; `windows` (the recipe's eval.windows) sizes
    the whole evaluation: misalignment samples and copies per distance bucket are at most that many,
    so `--set eval.windows=2` makes a quick smoke of every task."""

    args = ["--compare", *[str(run) for _, run, _ in stages], "--out", str(out), "--threads", "1", "--no-progress",
            "--data", str(data), *(["--source", source] if source else []), "--tasks", tasks,
            "--baseline", next((run.name for name, run, _ in stages if name == BASELINE), stages[0][1].name),
            "--windows", str(windows),  # the in-training evaluation's windows: the same numbers
            "--length-multipliers", "0.5,1,2,4", "--passkey-samples", "2", "--passkey-depths", "0,0.5,1",
            "--misalign-samples", str(min(32, windows)), "--copy-max-per-bucket", str(min(40, windows))]
    if eval_cli.main(args) != 0:
        raise UserError("the demo's evaluation failed; see the output above")


def main(argv: list[str]) -> int:
    p = command_parser("demo", __doc__.split("\n\n")[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in every stage, e.g. --set train.max_steps=2 (repeatable)")
    p.add_argument("--nproc", type=int, default=None, help="ranks of the stage-2 runs (default 2 on CPU; stage 1 trains on one)")
    p.add_argument("--no-eval", action="store_true", help="skip the final `lsa eval --compare` report")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the base model of stage 1 again (recipes/tiny-cpu.yaml on one rank, ~9 min, into "
                        "run.output_dir) instead of starting from the committed demo/tiny-cpu-base")
    args = p.parse_args(argv)
    stages = run_stages(args.overrides, args.nproc, from_scratch=args.from_scratch)
    long_range, natural = held_out_names(STAGES[1], args.overrides)
    ok, lines = summarise(stages, long_range, natural)
    if not args.no_eval:
        # the report on the held-out data that measures long-range use (the mixture's held-out part),
        # and the same models on natural text beside it
        out = stages[-1][1].parent / "demo-eval"
        windows, data = load_recipe(stages[1][1] / "config.yaml").eval.windows, stages[1][1] / "config.yaml"
        compare(stages, out, windows, data, None if long_range == "all" else long_range)
        if natural != "all":
            compare(stages, out / natural, windows, data, natural, tasks="ppl,misalign")
        report = out / "report.md"
        beside = f" The same models on natural text (`{natural}`): {natural}/report.md." if natural != "all" else ""
        report.write_text(f"Held-out data of this report: `{long_range}` (the mixture's held-out part, which "
                          f"rewards long-range use).{beside}\n\n" + report.read_text()
                          + "\n## The demo's verdict\n\nFirst from this report's paired table (the windows of "
                          "the tables above). Then the console's lines, from each run's last in-training evaluation "
                          f"({in_training_windows(stages[-1][1])}, on its own recipe's held-out data; natural text, "
                          "the same for every run, and the repeated-span mixture apart): other windows than the "
                          "tables above, so their numbers differ from the table's by the choice of windows.\n\n"
                          + "\n".join(paired_lines(out / "report.json", long_range) + lines) + "\n")
        cli_console().print(f"evaluation report: {report} (plots beside it; natural text in {out / natural})")
    return 0 if ok else 1
