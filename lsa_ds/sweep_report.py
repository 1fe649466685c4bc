"""`lsa sweep --report`: one comparison of a sweep's runs — report.md, report.csv and report.png
in the sweep folder.

Per run it reads the last evaluation row of metrics.jsonl (held-out loss/perplexity at the
recipe's eval lengths, and the held-out misalignment and CE gap) and, when
`lsa eval` has written runs/<name>/eval/report.json, its perplexity versus length, misalignment
(with 95% intervals) and passkey accuracy. A run that does not exist yet is listed as missing; one
without an hf/ export as unfinished.

When `train.seed` is a grid key, points that differ only in it form one *arm*: report.md gets the
mean over seeds of every number with its 95% interval across seeds (Student t), and each arm's
paired difference from the baseline arm seed by seed; report-arms.csv has the same numbers.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from lsa_ds.errors import UserError
from lsa_ds.metrics_log import length_keys, read_rows

TRAIN_SCALARS = ("misalign_sce", "misalign_skl", "ce_gap")
"""Keys of the trainer's eval rows reported besides loss@N / ppl@N (lsa_ds/trainer.py `evaluate`)."""
ENTROPY_PREFIX = "misalign_entropy"
"""Eval-row keys of the predictions' entropy beside SCE, when the trainer logs them (DESIGN.md §2)."""
SEED_KEY = "train.seed"


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
        row["eval"] = {"ppl": ppl, "misalignment": model.get("misalignment") or {},
                       "passkey": (model.get("passkey") or {}).get("accuracy_overall")}
    return row


def _lengths(rows: list[dict], prefix: str) -> list[int]:
    return sorted({n for r in rows for n in length_keys(r["train"], prefix)})


def _eval_lengths(rows: list[dict]) -> list[int]:
    return sorted({n for r in rows if r["eval"] for n in r["eval"]["ppl"]})


def _mis(row: dict, variant: str, measure: str) -> dict | None:
    return ((row["eval"] or {}).get("misalignment", {}).get(variant) or {}).get(measure)


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
def _f(x, spec: str = ".4f") -> str:
    return "–" if x is None or x == "" or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _v(value) -> str:
    return "" if value == "" else json.dumps(value) if not isinstance(value, str) else value


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(r) + " |" for r in body], ""]


def markdown(sweep, rows: list[dict], flats: list[dict], files: list[str]) -> str:
    keys = sweep.keys()
    grid = "; ".join(" × ".join(f"`{k}` ∈ {{{', '.join(_v(x) for x in g[k])}}}" for k in g) for g in sweep.grids)
    from lsa_ds.sweep_spec import flatten, yaml_value

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
    body = [[f["run"] + (" *(requires)*" if f["role"] == "requires" else ""), *[_v(f[k]) for k in keys], f["status"],
             _f(f["step"], "d") if f["step"] != "" else "–", *[_f(f[f"loss@{n}"]) for n in losses],
             _f(f["misalign_sce"]), _f(f["misalign_skl"]), _f(f["ce_gap"]), _f(f["step_seconds"], ".2f")]
            for f in flats]
    out += _table(header, body)
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
            cells = [f["run"], *[_f(f[f"eval_ppl@{n}"], ".2f") for n in lengths]]
            for v in variants:
                for m in ("sce", "skl"):
                    mean = f[f"eval_misalign_{m}_{v}"]
                    cells.append("–" if mean == "" else f"{mean:.3f} [{f[f'eval_misalign_{m}_{v}_lo']:.3f}, "
                                                        f"{f[f'eval_misalign_{m}_{v}_hi']:.3f}]")
            body.append(cells + ([_f(f.get("eval_passkey"), ".2f")] if has_pk else []))
        out += _table(header, body)
    return "\n".join(out)


# ------------------------------------------------------------------------------------ plot
def _length_axis(ax, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    if lengths:
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()


def _plain_log_labels(ax) -> None:
    """Log-scale y labels as plain numbers (80, not 8×10¹); minor ones only over a narrow range."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if high / max(low, 1e-12) < 20 else NullFormatter())


def plot(rows: list[dict], path: Path) -> Path:
    """Held-out loss vs length (training eval), `lsa eval` perplexity vs length, misalignment bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# ------------------------------------------------------------------------------ arms over seeds
def numbers(row: dict) -> dict[str, float]:
    """One finished run's numbers the arm view averages over seeds, in report order: training-eval
    loss@N, misalignment, entropy (when logged), CE gap; then `lsa eval` loss (ln ppl) and
    last-position misalignment."""
    t, ev = row["train"], row["eval"] or {}
    out = {f"loss@{n}": v for n, v in sorted(length_keys(t).items())}
    for k in ("misalign_sce", "misalign_skl", *sorted(k for k in t if k.startswith(ENTROPY_PREFIX)), "ce_gap"):
        out[k] = t.get(k)
    for n, p in sorted(ev.get("ppl", {}).items()):
        out[f"eval loss@{n}"] = math.log(p["ppl"]) if p.get("ppl") else None
    for m in ("sce", "skl"):
        last = _mis(row, "last", m)
        out[f"eval misalign_{m} (last)"] = last and last["mean"]
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _baseline(arms: list[dict], wanted: str | None) -> tuple[dict | None, str]:
    if wanted:
        hit = [a for a in arms if wanted in (a["name"], a["label"])]
        if not hit:
            raise UserError(f"baseline arm {wanted!r}: not one of {', '.join(a['name'] for a in arms)}")
        return hit[0], "chosen by name"
    off = [a for a in arms if a["align_off"]]
    if not off:
        return None, "no arm has alignment off (align.enabled: false) and none was named"
    return off[0], "alignment off" + (f"; the first of {len(off)} such arms" if len(off) > 1 else "")


def arm_view(sweep, rows: list[dict], baseline: str | None = None, n_boot: int = 10000) -> dict | None:
    """Points grouped into arms by their grid values without `train.seed`; per arm and number the
    mean over finished seeds with its across-seeds 95% interval, and the paired difference from the
    baseline arm over the seeds both finished. None when the grid has no seeds."""
    if SEED_KEY not in sweep.keys():
        return None
    from lsa_ds.eval.stats import across_seeds, paired  # lazily: lsa_ds.eval imports torch
    from lsa_ds.sweep_spec import label

    other_keys = [k for k in sweep.keys() if k != SEED_KEY]
    groups: dict[str, dict] = {}
    for point, row in zip(sweep.points, rows[len(sweep.requires):]):
        rest = {k: v for k, v in point.values.items() if k != SEED_KEY}
        arm_label = label(rest, other_keys) if rest else ""
        arm = groups.setdefault(json.dumps(rest, sort_keys=True, default=str), {
            "name": f"{sweep.name}-{arm_label}" if arm_label else sweep.name, "label": arm_label, "values": rest,
            "align_off": rest.get("align.enabled", point.recipe.align.enabled) is False, "planned": [], "runs": {}})
        arm["planned"].append(point.values.get(SEED_KEY))
        if row["status"] == "finished":  # a run still training would mix an early checkpoint in
            arm["runs"][point.values.get(SEED_KEY)] = numbers(row)
    arms = list(groups.values())
    if not any(len(a["planned"]) > 1 for a in arms):
        return None
    base, why = _baseline(arms, baseline)
    metrics = list(dict.fromkeys(k for a in arms for run in a["runs"].values() for k in run))
    for a in arms:
        a["seeds"] = sorted(a["runs"], key=str)
        a["stats"], a["paired"] = {}, {}
        for m in metrics:
            vals = [a["runs"][s][m] for s in a["seeds"] if m in a["runs"][s]]
            if vals:
                a["stats"][m] = across_seeds(vals).to_dict()
            if base is None or a is base:
                continue
            common = [s for s in a["seeds"] if m in a["runs"][s] and m in base["runs"].get(s, {})]
            if common:
                pair = paired([a["runs"][s][m] for s in common], [base["runs"][s][m] for s in common],
                              interval=across_seeds, n_boot=n_boot if len(common) > 1 else 0)
                a["paired"][m] = {"seeds": common, **pair.to_dict()}
    return {"seed_key": SEED_KEY, "baseline": base and base["name"], "baseline_why": why, "metrics": metrics,
            "n_boot": n_boot, "arms": arms}


def _ci(d: dict, spec: str = ".4f") -> str:
    if not d or not math.isfinite(d["lo"]):
        return _f(d and d["mean"], spec) + (" (1 seed)" if d else "")
    return f"{d['mean']:{spec}} [{d['lo']:{spec}}, {d['hi']:{spec}}]"


def arms_markdown(view: dict) -> list[str]:
    arms, metrics = view["arms"], view["metrics"]
    out = ["## Arms over seeds", "",
           f"Points that differ only in `{view['seed_key']}` form one arm. Each cell: the mean over the arm's "
           "finished seeds [95% interval across seeds: Student t with n − 1 degrees of freedom — with 3–5 "
           "seeds the normal 1.96 would be far too narrow]. `eval …` rows come from `lsa eval` (loss = ln "
           "perplexity; misalignment at the last position).", ""]
    def seeds(a: dict) -> str:
        waiting = [s for s in a["planned"] if s not in a["runs"]]
        return (f"seeds {', '.join(map(_v, a['seeds'])) or 'none finished'}"
                + (f"; {', '.join(map(_v, waiting))} not finished" if waiting else ""))

    header = ["number", *[f"{a['name']} ({seeds(a)})" for a in arms]]
    out += _table(header, [[m, *[_ci(a["stats"].get(m)) for a in arms]] for m in metrics] or [["–"] * len(header)])
    if view["baseline"] is None:
        return out + [f"No paired comparison: {view['baseline_why']}.", ""]
    body = [[a["name"], m, ", ".join(map(_v, p["seeds"])), _ci(p["diff"], "+.4f"), f"{p['better']} / {p['worse']}",
             f"{p['p_sign']:.3g}", _f(p.get("p_boot"), ".3g")] for a in arms for m, p in a["paired"].items()]
    out += [f"## Arms against the baseline `{view['baseline']}` ({view['baseline_why']})", "",
            "Seed i of each arm minus seed i of the baseline, over the seeds both finished: the mean difference "
            "[95% interval across seeds, Student t], how many seeds were lower / higher than the baseline's, the "
            "two-sided exact sign test (3 seeds cannot go below p = 0.25) and a two-sided bootstrap p of a zero "
            f"mean difference ({view['n_boot']} resamples; optimistic with so few seeds — read it beside the "
            "interval). Negative is lower loss or less misalignment.", ""]
    return out + _table(["arm", "number", "seeds", "difference", "lower / higher", "p (sign)", "p (bootstrap)"],
                        body or [["–"] * 7])


def write_arms_csv(view: dict, path: Path) -> None:
    keys = list(dict.fromkeys(k for a in view["arms"] for k in a["values"]))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["arm", *keys, "number", "seeds", "n", "mean", "lo", "hi", "std", "baseline", "paired_seeds",
                         "diff", "diff_lo", "diff_hi", "lower", "higher", "p_sign", "p_boot"])
        for a in view["arms"]:
            for m in view["metrics"]:
                s, p = a["stats"].get(m), a["paired"].get(m)
                cells = [s["n"], s["mean"], s["lo"], s["hi"], s["std"]] if s else [0, "", "", "", ""]
                pair = ([view["baseline"], ";".join(map(_v, p["seeds"])), p["diff"]["mean"], p["diff"]["lo"],
                         p["diff"]["hi"], p["better"], p["worse"], p["p_sign"], p.get("p_boot")] if p else [""] * 9)
                row = [a["name"], *[_v(a["values"].get(k, "")) for k in keys], m,
                       ";".join(map(_v, a["seeds"])), *cells, *pair]
                writer.writerow(["" if c is None or (isinstance(c, float) and not math.isfinite(c)) else c for c in row])


def write_sweep_report(sweep, folder: Path, baseline: str | None = None) -> str:
    """Write report.md, report.csv, report.png (and report-arms.csv when the grid has seeds) into
    `folder`; return the Markdown. `baseline`: the arm the seed-paired differences are taken from
    (default: the arm with alignment off)."""
    rows = [gather(p) for p in [*sweep.requires, *sweep.points]]
    keys = sweep.keys()
    flats = [flat(r, keys, rows) for r in rows]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "report.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for f in flats for k in f)), restval="")
        writer.writeheader()
        writer.writerows(flats)
    plot(rows, folder / "report.png")
    view = arm_view(sweep, rows, baseline)
    files = ["report.md", "report.csv", "report.png"] + (["report-arms.csv"] if view else [])
    if view:
        write_arms_csv(view, folder / "report-arms.csv")
    text = markdown(sweep, rows, flats, files)
    if view:
        text += "\n" + "\n".join(arms_markdown(view))
    (folder / "report.md").write_text(text + "\n")
    return text + f"\n(report in {folder}/report.md, .csv, .png{', report-arms.csv' if view else ''})"
