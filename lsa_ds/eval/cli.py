"""`lsa eval MODEL_OR_RUN [...]` and `lsa eval --compare A B ... --out DIR`.

Evaluates runs (runs/<name>/) and Hugging Face causal-LM folders (or hub names, found in the local
Hugging Face cache, never downloaded), one model at a time in
one process: perplexity versus context length, long-short misalignment, passkey retrieval, and
LongBench / BABILong files when given. Writes report.json, report.md and PNG plots to --out
(default runs/<name>/eval for a single run). docs/eval.md explains every number.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.table import Table
from transformers.utils import logging as hf_logging

from lsa_ds.cli_help import command_parser, console
from lsa_ds.errors import UserError
from lsa_ds.eval import babilong, longbench
from lsa_ds.eval.benchmarks import generate_answers
from lsa_ds.eval.correlation import correlate
from lsa_ds.eval.data_choice import choose_data
from lsa_ds.eval.forward import hf_logits_fn
from lsa_ds.eval.heldout import HeldOut
from lsa_ds.eval.misalignment import measure_misalignment
from lsa_ds.eval.passkey import run_passkey
from lsa_ds.eval.perplexity import default_score_tokens, perplexity_at
from lsa_ds.eval.report import paired_against, windows_groups, write_report
from lsa_ds.eval.span_tasks import SPAN_TASKS, SpanDocs, SpanSettings, copy_entry, split_entry
from lsa_ds.eval.targets import load_model, pick_dtype, resolve
from lsa_ds.recipe import load_recipe

TASKS = ("ppl", "misalign", "passkey", "niah", *SPAN_TASKS, "longbench", "babilong")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("eval", __doc__)
    p.add_argument("targets", nargs="*", metavar="MODEL_OR_RUN",
                   help="run directories, HF model folders, or hub names in the local HF cache")
    p.add_argument("--compare", nargs="+", default=[], metavar="MODEL_OR_RUN",
                   help="several runs/models in one table and plot (same as listing them positionally)")
    p.add_argument("--out", help="output folder (required unless evaluating a single run: runs/<name>/eval)")
    p.add_argument("--baseline", metavar="NAME",
                   help="model (its name in the report) the others are compared with, window by window "
                        "(default: the first one)")
    p.add_argument("--tasks", default="ppl,misalign,passkey",
                   help=f"comma-separated subset of {','.join(TASKS)} "
                        "(longbench/babilong also run when their files are given)")
    p.add_argument("--seed", type=int, default=0, help="seeds misalignment draws and passkey keys")
    g = p.add_argument_group("held-out data and lengths")
    g.add_argument("--data", metavar="RECIPE",
                   help="recipe whose sources' eval split every model is scored on, tokenized with each model's "
                        "tokenizer (default: the first run's data, read from its token cache; without runs the "
                        "data the first model folder recorded (lsa_data.json), else the builtin stdlib corpus)")
    g.add_argument("--source", metavar="NAME",
                   help="score only this source's held-out text (e.g. the natural text or a repeated-span mixture "
                        "of a run's data; default: all sources, blended by weight)")
    g.add_argument("--length", type=int, help="training length L of model folders that are not runs "
                                              "(default: their max_position_embeddings; runs use train.seq_len)")
    g.add_argument("--lengths", help="perplexity context lengths in tokens, e.g. 256,512 (overrides multipliers)")
    g.add_argument("--length-multipliers", default="0.5,1,2,4,8",
                   help="perplexity lengths as multiples of each model's L (compared models are all evaluated "
                        "at the union); 8 is the slowest on CPU")
    g.add_argument("--score-tokens", type=int,
                   help="final tokens scored per window at every length (default: half the shortest length)")
    g.add_argument("--windows", type=int, default=16, help="held-out windows for perplexity")
    g.add_argument("--batch-tokens", type=int, default=8192, help="input tokens per forward pass")
    g = p.add_argument_group("misalignment")
    g.add_argument("--misalign-samples", type=int, default=64, help="samples (held-out windows) per variant")
    g.add_argument("--misalign-variants", default="last,overlap", help="last and/or overlap")
    g = p.add_argument_group("passkey, and niah (the same grid with held-out text as the haystack)")
    g.add_argument("--passkey-lengths", help="prompt lengths in tokens (overrides --passkey-multipliers)")
    g.add_argument("--passkey-multipliers", default="0.5,1,2,4", help="prompt lengths as multiples of each model's L")
    g.add_argument("--passkey-depths", default="0,0.25,0.5,0.75,1",
                   help="needle depths (0 = start of the filler, 1 = end)")
    g.add_argument("--passkey-samples", type=int, default=4, help="keys per (length, depth) cell")
    g.add_argument("--passkey-new-tokens", type=int, default=8, help="greedy tokens generated per prompt")
    g = p.add_argument_group("copy and split (data with a repeated-span source: docs/eval.md)")
    g.add_argument("--copy-context", type=int, help="tokens a model reads when completing a copy (default: the "
                                                   "longest training length among the models)")
    g.add_argument("--copy-l0", type=int, help="distances below it count as inside L0, and copies are measured again "
                                               "at this context (default: the shortest training length among the "
                                               "models; set it when evaluating one extended model at a time)")
    g.add_argument("--copy-max-per-bucket", type=int, default=100, help="copies scored per distance bucket")
    g.add_argument("--copy-prompt-tokens", type=int, default=4, help="tokens of a copy shown before completing it")
    g = p.add_argument_group("benchmarks you bring (docs/eval.md describes the file formats)")
    g.add_argument("--longbench", action="append", default=[], metavar="PATH",
                   help="LongBench(-E) .jsonl file or folder (repeatable)")
    g.add_argument("--longbench-prompts", metavar="JSON",
                   help="dataset -> prompt template, e.g. LongBench's config/dataset2prompt.json")
    g.add_argument("--longbench-maxlen", metavar="JSON",
                   help="dataset -> new tokens, e.g. LongBench's config/dataset2maxlen.json")
    g.add_argument("--babilong", action="append", default=[], metavar="PATH",
                   help="BABILong .jsonl/.json file or folder (repeatable)")
    g.add_argument("--bench-max-examples", type=int, help="at most this many examples per benchmark file")
    g.add_argument("--bench-max-input-tokens", type=int,
                   help="prompts longer than this are cut in the middle (default: each model's L)")
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: fp32 on CPU, bf16 on GPU")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; 1 is often fastest for "
                                               "small models on a busy machine)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# ------------------------------------------------------------------------------------ settings
def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0.5,1,2") from None
    if not values:
        raise UserError(f"{flag}: empty list")
    return values


def _ints(text: str, flag: str) -> list[int]:
    values = _floats(text, flag)
    if any(v != int(v) or v < 1 for v in values):
        raise UserError(f"{flag} {text!r}: expected positive whole numbers of tokens")
    return sorted({int(v) for v in values})


def _lengths(explicit: str | None, multipliers: str, targets, flag: str) -> list[int]:
    """Explicit lengths, else the union over targets of round(multiplier × L)."""
    if explicit:
        return _ints(explicit, f"--{flag}-lengths")
    mults = _floats(multipliers, f"--{flag}-multipliers")
    if any(m <= 0 for m in mults):
        raise UserError(f"--{flag}-multipliers {multipliers!r}: multipliers must be positive")
    return sorted({max(2, round(m * t.train_len)) for t in targets for m in mults})


@dataclass
class Plan:
    """Everything `lsa eval` will do, resolved and checked before any model is loaded."""

    tasks: set[str]
    device: torch.device
    dtype: torch.dtype
    lengths: list[int]
    score_tokens: int
    passkey_lengths: list[int]
    depths: list[float]
    variants: list[str]
    benchmarks: dict[str, list] = field(default_factory=dict)
    """"longbench" / "babilong" -> their examples (read once, prompted per model)."""
    span: SpanSettings | None = None
    """What copy / split measure (when asked)."""

    def settings(self, args) -> dict:
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), "seed": args.seed,
                "tasks": sorted(self.tasks),
                "perplexity": {"lengths": self.lengths, "score_tokens": self.score_tokens, "windows": args.windows},
                "misalignment": {"variants": self.variants, "samples": args.misalign_samples},
                "passkey": {"lengths": self.passkey_lengths, "depths": self.depths, "samples": args.passkey_samples,
                            "new_tokens": args.passkey_new_tokens},
                "benchmarks": {k: len(v) for k, v in self.benchmarks.items()},
                **({"span": self.span.to_dict()} if self.span else {})}


def make_plan(args, targets) -> Plan:
    tasks = {t.strip() for t in args.tasks.split(",") if t.strip()}
    tasks |= {"longbench"} if args.longbench else set()
    tasks |= {"babilong"} if args.babilong else set()
    if tasks - set(TASKS):
        raise UserError(f"--tasks: unknown {', '.join(sorted(tasks - set(TASKS)))} (known: {', '.join(TASKS)})")
    for flag in ("windows", "misalign_samples", "passkey_samples", "passkey_new_tokens", "batch_tokens"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    variants = [v.strip() for v in args.misalign_variants.split(",") if v.strip()]
    if not variants or set(variants) - {"last", "overlap"}:
        raise UserError(f"--misalign-variants {args.misalign_variants!r}: expected last and/or overlap")
    lengths = _lengths(args.lengths, args.length_multipliers, targets, "length")
    K = args.score_tokens or default_score_tokens(lengths)
    if not 1 <= K <= min(lengths):
        raise UserError(f"--score-tokens {K} must be between 1 and the shortest length {min(lengths)}")
    depths = _floats(args.passkey_depths, "--passkey-depths")
    if any(not 0 <= d <= 1 for d in depths):
        raise UserError(f"--passkey-depths {args.passkey_depths!r}: depths must be in [0, 1]")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    benchmarks = {
        "longbench": [ex for path in args.longbench for ex in longbench.read_longbench(
            path, args.longbench_prompts, args.longbench_maxlen, args.bench_max_examples)],
        "babilong": [ex for path in args.babilong for ex in babilong.read_babilong(path, args.bench_max_examples)]}
    span = None
    if tasks & set(SPAN_TASKS):
        lens = [t.train_len for t in targets]
        context, l0 = args.copy_context or max(lens), args.copy_l0 or min(lens)
        if not 1 <= args.copy_prompt_tokens < l0 <= context or args.copy_max_per_bucket < 1:
            raise UserError(f"--copy-prompt-tokens {args.copy_prompt_tokens}, --copy-l0 {l0}, --copy-context {context}, "
                            f"--copy-max-per-bucket {args.copy_max_per_bucket}: need 1 <= prompt tokens < L0 <= context "
                            "and at least one copy per bucket")
        span = SpanSettings(context, l0, args.copy_prompt_tokens, args.copy_max_per_bucket,
                            args.misalign_samples, args.seed)
    return Plan(tasks, device, pick_dtype(args.dtype, device), lengths, K,
                _lengths(args.passkey_lengths, args.passkey_multipliers, targets, "passkey"), depths,
                [v for v in ("last", "overlap") if v in variants], {k: v for k, v in benchmarks.items() if v}, span)


# ---------------------------------------------------------------------------------- running
def evaluate_target(t, plan: Plan, args, heldout, spans: SpanDocs | None = None) -> dict:
    """Every planned task on one target; its entry of report["models"]."""

    progress = not args.no_progress
    entry = {**t.describe(), "heldout": heldout.source(t), "seconds": {}}
    print(f"evaluating {t.name} ({t.kind}, L={t.train_len}) on {plan.device}", file=sys.stderr)
    model = load_model(t, plan.device, plan.dtype)
    logits_fn = hf_logits_fn(model)
    clock = time.perf_counter()

    def lap(task: str) -> None:
        nonlocal clock
        entry["seconds"][task], clock = round(time.perf_counter() - clock, 2), time.perf_counter()

    if "ppl" in plan.tasks:
        win = heldout.windows(t, max(plan.lengths) + 1, args.windows)
        if len(win) < args.windows:  # said now and carried into the settings, the header and the console
            print(f"note: {t.name}: the held-out split has {len(win)} windows of {max(plan.lengths) + 1} tokens, "
                  f"fewer than --windows {args.windows}; perplexity reads those {len(win)}", file=sys.stderr)
        res = perplexity_at(logits_fn, win, plan.lengths, plan.score_tokens, batch_tokens=args.batch_tokens,
                            progress=progress, desc=f"{t.name}: perplexity")
        entry["perplexity"] = {"score_tokens": plan.score_tokens, "windows": len(win), "windows_sha": _sha(win),
                               "lengths": [r.to_dict() for r in res.values()]}
        lap("perplexity")
    if "misalign" in plan.tasks:
        win = heldout.windows(t, t.train_len, args.misalign_samples)
        entry["misalignment"] = {
            v: {**measure_misalignment(logits_fn, win, t.train_len, v, args.misalign_samples, args.seed,
                                       batch_tokens=args.batch_tokens, progress=progress,
                                       desc=f"{t.name}: misalignment ({v})").to_dict(), "windows_sha": _sha(win)}
            for v in plan.variants}
        lap("misalignment")
    for task in [k for k in ("passkey", "niah") if k in plan.tasks]:
        haystack = None
        if task == "niah":  # consecutive held-out windows of the evaluation's data, in this model's tokens
            rows = heldout.windows(t, t.train_len, -(-max(plan.passkey_lengths) // t.train_len) + 1)
            haystack = [int(i) for i in np.concatenate(rows)]
        entry[task] = run_passkey(model, t.tokenizer, plan.passkey_lengths, plan.depths, args.passkey_samples,
                                  args.passkey_new_tokens, args.seed, progress=progress, desc=f"{t.name}: {task}",
                                  haystack=haystack).to_dict()
        lap(task)
    if "copy" in plan.tasks:
        entry["copy"] = copy_entry(logits_fn, spans.docs(t.tokenizer), plan.span, progress=progress)
        lap("copy")
    if "split" in plan.tasks:  # at the model's own L, as its misalignment is measured
        entry["split"] = split_entry(logits_fn, spans.docs(t.tokenizer), t.train_len, plan.span, progress=progress)
        lap("split")
    for key, module in (("longbench", longbench), ("babilong", babilong)):
        examples = plan.benchmarks.get(key)
        if key in plan.tasks and examples:
            answers = generate_answers(model, t.tokenizer, examples, args.bench_max_input_tokens or t.train_len,
                                       progress=progress, desc=f"{t.name}: {key}")
            entry[key] = module.summarise(examples, answers)
            entry[key]["predictions"] = [{"key": ex.key, "task": ex.task, "prediction": a, "answers": ex.answers}
                                         for ex, a in zip(examples, answers)]
            lap(key)
    del model, logits_fn
    if plan.device.type == "cuda":
        gc.collect()  # release this model's memory before the next one loads
        torch.cuda.empty_cache()
    return entry


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)

    paths = [*args.targets, *args.compare]
    if not paths:
        raise UserError("lsa eval: name a run directory or model folder (or --compare A B ...)")
    targets = [resolve(p, args.length) for p in paths]
    _dedupe_names(targets)
    if args.out:
        out_dir = Path(args.out)
    elif len(targets) == 1 and targets[0].run_dir is not None:
        out_dir = targets[0].run_dir / "eval"
    else:
        what = "comparing several models" if len(targets) > 1 else f"{paths[0]} is not a run"
        raise UserError(f"--out DIR is required when {what}")
    plan = make_plan(args, targets)
    if args.threads:
        torch.set_num_threads(max(1, args.threads))
    choice = choose_data(targets, load_recipe(args.data).data if args.data else None, args.data)
    heldout = HeldOut(choice, args.source)
    if plan.tasks & {"ppl", "misalign"}:
        for t in targets:
            heldout.check(t)  # a missing token cache fails now, not after the first model ran
        if choice.notice():
            print(f"note: {choice.notice()}", file=sys.stderr)
    spans = SpanDocs(choice.data, args.source) if plan.span else None
    if spans:
        spans.check()  # a data set without a repeated-span source fails now, before any model loads
    if args.no_progress:
        hf_logging.disable_progress_bar()
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "lsa eval " + shlex.join(argv), "settings": plan.settings(args),
              "models": [evaluate_target(t, plan, args, heldout, spans) for t in targets]}
    only = f", source {args.source}" if args.source else ""  # the demo's two tables differ only here
    report["data"] = {"origin": choice.origin + only, "adopted": choice.adopted, "notice": choice.notice()}
    _windows_used(report, args.windows)
    report["correlation"] = correlate(report["models"]) if len(targets) > 1 else None
    report["paired"] = paired_against(report["models"], args.baseline) if len(targets) > 1 else None
    md = write_report(report, out_dir)
    _print_summary(report)
    print(f"report: {md} (also report.json and {', '.join(report['plots']) or 'no plots'} in {out_dir})")
    return 0


def _windows_used(report: dict, asked: int) -> None:
    """settings.perplexity.windows: the count the models read (a number, or one per model when
    they differ), beside the count asked for."""
    used = {m["name"]: m["perplexity"]["windows"] for m in report["models"] if m.get("perplexity")}
    if used:
        ppl = report["settings"]["perplexity"]
        ppl["windows"] = next(iter(used.values())) if len(set(used.values())) == 1 else used
        ppl["windows_asked"] = asked


def _sha(windows) -> str:
    """Identity of the token windows a metric read: models are paired only on the very same windows."""
    return hashlib.sha256(np.ascontiguousarray(windows, dtype=np.int64).tobytes()).hexdigest()[:16]


def _dedupe_names(targets) -> None:
    seen: dict[str, int] = {}
    for t in targets:
        seen[t.name] = seen.get(t.name, 0) + 1
        if seen[t.name] > 1:
            t.name = f"{t.name}#{seen[t.name]}"


def _print_summary(report: dict) -> None:
    models = [m for m in report["models"] if m.get("perplexity")]
    if not models:
        return
    lengths = sorted({p["length"] for m in models for p in m["perplexity"]["lengths"]})
    groups = windows_groups(models)
    windows = sorted({m["perplexity"]["windows"] for m in models})
    data = report.get("data") or {}
    title = (f"held-out perplexity, {data.get('origin', 'held-out data')}: the same final tokens at every length, "
             f"{'/'.join(map(str, windows))} windows")
    table = Table()  # the title as a line of its own: rich wraps a table's title to the table's width
    table.add_column("model")
    if groups:
        table.add_column("windows")
    for n in lengths:
        table.add_column(f"@{n}", justify="right")
    table.add_column("misalign SCE (last)", justify="right")
    for m in models:
        by_len = {p["length"]: p["ppl"] for p in m["perplexity"]["lengths"]}
        mis = (m.get("misalignment") or {}).get("last")
        table.add_row(m["name"], *([groups[m["name"]]] if groups else []),
                      *[f"{by_len[n]:.4g}" if n in by_len else "–" for n in lengths],
                      f"{mis['sce']['mean']:.3f}" if mis else "–")
    out = console()
    out.print(title)
    out.print(table)
    if groups:
        out.print("windows: rows with different letters read different token windows (another tokenizer or data); "
                  "their perplexities are not comparable and are not paired")
