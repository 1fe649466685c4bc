"""`lsa sweep --report`: one comparison of a sweep's runs — report.md, report.csv and report.png
in the sweep folder.

Per run it reads the last evaluation row of metrics.jsonl (held-out loss/perplexity at the
recipe's eval lengths, and the held-out misalignment and CE gap) and, when
`lsa eval` has written runs/<name>/eval/report.json, its perplexity versus length, misalignment
(with 95% intervals) and passkey accuracy. A run that does not exist yet is listed as missing; one
without an hf/ export as unfinished.

When `train.seed` is a grid key, points that differ only in it form *arms* (lsa_ds/sweep/arms.py:
means over seeds, paired differences seed by seed and over seeds × windows, report-arms.csv/.png).
With 4 or more evaluated runs the paper's Table 1 is computed across them
(lsa_ds/sweep/correlation.py).
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from lsa_ds.eval.report import finite
from lsa_ds.eval.tables import markdown_table, number, value
from lsa_ds.rundir.metrics import length_keys, read_rows
from lsa_ds.sweep.arms import (
    ENTROPY_PREFIX,
    arm_view,
    arms_markdown,
    arms_plot,
    misalignment_of,
    write_arms_csv,
)
from lsa_ds.sweep.correlation import correlation_section
from lsa_ds.sweep.spec import flatten, yaml_value

TRAIN_SCALARS = ("misalign_sce", "misalign_skl", "ce_gap")
"""Keys of the trainer's eval rows reported besides loss@N / ppl@N (lsa_ds/train/evaluation.py `evaluate`)."""


def gather(point) -> dict:
    """Everything the report shows about one run (a `sweep.Point`)."""
    run = point.run_dir
    row = {"run": point.name, "role": point.role, "values": point.values, "run_dir": str(run), "step": None,
           "train": {}, "step_seconds": None, "eval": None}
    if not run.is_dir():
        return {**row, "status": "missing"}
    row["status"] = "finished" if (run / "hf" / "config.json").is_file() else "unfinished"
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        rows = read_rows(metrics)
        steps = [r for r in rows if r.get("kind") != "eval"]
        evals = [r for r in rows if r.get("kind") == "eval"]
        if steps:
            row["step"] = steps[-1].get("step")
            times = [r["step_time"] for r in steps if "step_time" in r]  # logged steps only (run.log_every)
            row["step_seconds"] = sum(times) / len(times) if times else None
        if evals:
            last = evals[-1]
            row["eval_step"] = last.get("step")
            row["train"] = {k: v for k, v in last.items()
                            if k.startswith(("loss@", "ppl@", ENTROPY_PREFIX)) or k in TRAIN_SCALARS}
    report = run / "eval" / "report.json"
    if report.is_file():
        model = (json.loads(report.read_text()).get("models") or [{}])[0]
        ppl = {p["length"]: p for p in (model.get("perplexity") or {}).get("lengths", [])}
        row["eval"] = {"ppl": ppl, "ppl_sha": (model.get("perplexity") or {}).get("windows_sha"),
                       "misalignment": model.get("misalignment") or {},
                       "passkey": (model.get("passkey") or {}).get("accuracy_overall"), "model": model}
    return row


def _lengths(rows: list[dict], prefix: str) -> list[int]:
    return sorted({n for r in rows for n in length_keys(r["train"], prefix)})


def _eval_lengths(rows: list[dict]) -> list[int]:
    return sorted({n for r in rows if r["eval"] for n in r["eval"]["ppl"]})


def _mis(row: dict, variant: str, measure: str) -> dict | None:
    return misalignment_of(row, variant).get(measure)


def _variants(rows: list[dict]) -> list[str]:
    return [v for v in ("last", "overlap") if any(_mis(r, v, "sce") for r in rows)]


def flat(row: dict, keys: list[str], rows: list[dict]) -> dict:
    """One CSV row: grid values, status, training-eval numbers, `lsa eval` numbers (empty = none)."""
    out = {"run": row["run"], "role": row["role"], **{k: row["values"].get(k, "") for k in keys},
           "status": row["status"], "step": row["step"], "eval_step": row.get("eval_step"),
           "step_seconds": None if row["step_seconds"] is None else round(row["step_seconds"], 3)}
    for n in _lengths(rows, "loss@"):
        out[f"loss@{n}"] = row["train"].get(f"loss@{n}")
    for n in _lengths(rows, "ppl@"):
        out[f"ppl@{n}"] = row["train"].get(f"ppl@{n}")
    out.update({k: row["train"].get(k) for k in TRAIN_SCALARS})
    for n in _eval_lengths(rows):
        p = (row["eval"] or {"ppl": {}})["ppl"].get(n)
        out[f"eval_ppl@{n}"] = p and p["ppl"]
        out[f"eval_ppl@{n}_lo"], out[f"eval_ppl@{n}_hi"] = (p["ppl_ci"] if p else (None, None))
    for v in _variants(rows):
        for m in ("sce", "skl"):
            s = _mis(row, v, m)
            out[f"eval_misalign_{m}_{v}"] = s and s["mean"]
            out[f"eval_misalign_{m}_{v}_lo"], out[f"eval_misalign_{m}_{v}_hi"] = (s["lo"], s["hi"]) if s else (None, None)
    if any(r["eval"] and r["eval"]["passkey"] is not None for r in rows):
        out["eval_passkey"] = (row["eval"] or {}).get("passkey")
    return {k: ("" if v is None else v) for k, v in out.items()}


# ------------------------------------------------------------------------------------ markdown
def markdown(sweep, rows: list[dict], flats: list[dict], files: list[str]) -> str:
    keys = sweep.keys()
    grid = "; ".join(" × ".join(f"`{k}` ∈ {{{', '.join(value(x) for x in g[k])}}}" for k in g) for g in sweep.grids)

    fixed = ", ".join(f"`{k}={yaml_value(v)}`" for k, v in flatten(sweep.spec.fixed).items())
    out = [f"# Sweep `{sweep.name}`", "", *([sweep.spec.description.strip(), ""] if sweep.spec.description else []),
           f"- ablation: `{sweep.path}`, base recipe `{sweep.base}`, {len(sweep.points)} points",
           f"- grid: {grid}" + (f"; every point: {fixed}" if fixed else ""),
           f"- written {datetime.now(timezone.utc).isoformat(timespec='seconds')}; files: {', '.join(files)}", ""]
    missing = [r["run"] for r in rows if r["status"] != "finished"]
    if missing:
        out += [f"**Not finished:** {', '.join(missing)} (shown as missing/unfinished).", ""]
    losses = _lengths(rows, "loss@")
    out += ["## Held-out evaluation at the end of training", "",
            "Last `\"kind\": \"eval\"` row of each run's metrics.jsonl: held-out loss of the same final tokens at "
            "each context length, measured as `lsa eval` does (ppl = e^loss, in the CSV); misalignment (SCE / "
            "symmetric KL) and CE gap (short- minus long-context CE) of held-out aligned pairs with the recipe's "
            "shift range — measured for every arm, the baseline included.", ""]
    header = ["run", *[k.split(".", 1)[-1] for k in keys], "status", "step", *[f"loss@{n}" for n in losses],
              "misalign SCE", "misalign SKL", "CE gap", "s/step"]
    body = [[f["run"] + (" *(requires)*" if f["role"] == "requires" else ""), *[value(f[k]) for k in keys], f["status"],
             number(f["step"], "d") if f["step"] != "" else "–", *[number(f[f"loss@{n}"]) for n in losses],
             number(f["misalign_sce"]), number(f["misalign_skl"]), number(f["ce_gap"]), number(f["step_seconds"], ".2f")]
            for f in flats]
    out += markdown_table(header, body)
    lengths, variants = _eval_lengths(rows), _variants(rows)
    if lengths or variants:
        out += ["## `lsa eval` (runs/<name>/eval/report.json)", "",
                "Perplexity on the same final tokens at every context length, misalignment of next-token "
                "distributions under two context lengths in [L/2, L] (mean [95% interval]); see docs/eval.md.", ""]
        header = ["run", *[f"ppl@{n}" for n in lengths],
                  *[f"{m.upper()} ({v})" for v in variants for m in ("sce", "skl")]]
        has_pk = any("eval_passkey" in f for f in flats)
        header += ["passkey"] if has_pk else []
        body = []
        for f in flats:
            cells = [f["run"], *[number(f[f"eval_ppl@{n}"], ".2f") for n in lengths]]
            for v in variants:
                for m in ("sce", "skl"):
                    mean = f[f"eval_misalign_{m}_{v}"]
                    cells.append("–" if mean == "" else f"{mean:.3f} [{f[f'eval_misalign_{m}_{v}_lo']:.3f}, "
                                                        f"{f[f'eval_misalign_{m}_{v}_hi']:.3f}]")
            body.append(cells + ([number(f.get("eval_passkey"), ".2f")] if has_pk else []))
        out += markdown_table(header, body)
    return "\n".join(out)


# ------------------------------------------------------------------------------------ plot
def _length_axis(ax, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    if lengths:
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()


def _plain_log_labels(ax) -> None:
    """Log-scale y labels as plain numbers (80, not 8×10¹); minor ones only over a narrow range."""

    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if high / max(low, 1e-12) < 20 else NullFormatter())


def plot(rows: list[dict], path: Path) -> Path:
    """Held-out loss vs length (training eval), `lsa eval` perplexity vs length, misalignment bars."""

    matplotlib.use("Agg")

    have_eval = [r for r in rows if r["eval"] and r["eval"]["ppl"]]
    panels = 3 if have_eval else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2))
    ax = axes[0]
    for i, r in enumerate(rows):
        pts = sorted(length_keys(r["train"]).items())
        if pts:
            ax.plot(*zip(*pts), marker="o", color=f"C{i % 10}", label=r["run"])
    ax.set(xlabel="context length (tokens)", ylabel="held-out loss", title="end of training (metrics.jsonl)")
    _length_axis(ax, _lengths(rows, "loss@"))
    if have_eval:
        ax = axes[1]
        for i, r in enumerate(rows):
            if r in have_eval:
                pts = [r["eval"]["ppl"][n] for n in sorted(r["eval"]["ppl"])]
                err = [[p["ppl"] - p["ppl_ci"][0] for p in pts], [p["ppl_ci"][1] - p["ppl"] for p in pts]]
                ax.errorbar([p["length"] for p in pts], [p["ppl"] for p in pts], yerr=err, marker="o", capsize=3,
                            color=f"C{i % 10}", label=r["run"])
        _length_axis(ax, _eval_lengths(rows))
        ax.set(yscale="log", xlabel="context length (tokens)", ylabel="perplexity", title="lsa eval")
        _plain_log_labels(ax)
    ax = axes[-1]
    # one source for every bar: `lsa eval` (last position, with intervals) when any run has it, else
    # the training-time evaluation (all aligned pairs, alignment-on runs only) — never a mix
    use_eval = any(_mis(r, "last", "skl") for r in rows)
    bars = [(i, r["run"], _mis(r, "last", "skl")) if use_eval else
            (i, r["run"], {"mean": r["train"]["misalign_skl"]} if "misalign_skl" in r["train"] else None)
            for i, r in enumerate(rows)]
    bars = [(i, name, s) for i, name, s in bars if s]
    source = "lsa eval, last position, 95% CI" if use_eval else "training eval, all aligned pairs"
    if bars:
        err = [[s["mean"] - s.get("lo", s["mean"]) for _, _, s in bars], [s.get("hi", s["mean"]) - s["mean"] for _, _, s in bars]]
        ax.bar(range(len(bars)), [s["mean"] for _, _, s in bars], yerr=err, capsize=3,
               color=[f"C{i % 10}" for i, _, _ in bars])
        ax.set_xticks(range(len(bars)), [name for _, name, _ in bars], rotation=30, ha="right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no misalignment measured yet", ha="center", va="center", transform=ax.transAxes)
        source = ""
    ax.set(ylabel="symmetric KL", title="misalignment" + (f" ({source})" if source else ""))
    ax.title.set_fontsize(9)
    missing = [r["run"] for r in rows if r["status"] == "missing"]
    for a in axes[:-1]:
        if a.lines or a.containers:
            a.legend(fontsize=7)
        else:
            a.text(0.5, 0.5, "no finished evaluation yet", ha="center", va="center", transform=a.transAxes)
    if missing:
        fig.suptitle(f"missing: {', '.join(missing)}", fontsize=8, color="C3")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_sweep_report(sweep, folder: Path, baseline: str | None = None) -> str:
    """Write report.md, report.csv, report.png (with seeds also report-arms.csv and
    report-arms.png; with 4 or more evaluated runs report-correlation.png) into `folder`; return
    the Markdown. `baseline`: the arm the paired differences are taken from (default: the arm with
    alignment off)."""

    rows = [gather(p) for p in [*sweep.requires, *sweep.points]]
    keys = sweep.keys()
    flats = [flat(r, keys, rows) for r in rows]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "report.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for f in flats for k in f)), restval="")
        writer.writeheader()
        writer.writerows(flats)
    plot(rows, folder / "report.png")
    files, extra = ["report.md", "report.csv", "report.png"], []
    view = arm_view(sweep, rows, baseline)
    if view:
        write_arms_csv(view, folder / "report-arms.csv")
        files.append("report-arms.csv")
        extra += arms_markdown(view)
        if arms_plot(view, folder / "report-arms.png"):
            files.append("report-arms.png")
            extra += ["![arms](report-arms.png)", ""]
    arm_of = {row["run"]: a["name"] for a in view["arms"] for row in a["rows"].values()} if view else None
    corr, lines, made = correlation_section(rows, arm_of, folder)
    if "table" in corr:
        (folder / "report-correlation.json").write_text(json.dumps(finite(corr), indent=1))
        files += ["report-correlation.json", *made]
    text = markdown(sweep, rows, flats, files) + ("\n" + "\n".join(extra + lines) if extra or lines else "")
    (folder / "report.md").write_text(text + "\n")
    return text + f"\n(report in {folder}: {', '.join(files)})"

