"""Arms over seeds in `lsa sweep --report`: when `train.seed` is a grid key, points that differ only
in it form one *arm*.

Per arm and number: the mean over its finished seeds with a 95% interval across seeds (Student t).
Per arm against the baseline arm, two paired comparisons:

- *seed by seed*: seed i of the arm minus seed i of the baseline (one number per seed, t interval,
  sign test, bootstrap p) — every number, the training-time evaluation's included;
- *seeds × windows*: for the `lsa eval` numbers that keep one value per held-out window or sample
  (loss at each length, misalignment and entropy per variant), the difference on the very same
  window under the very same seed, pooled over both (`stats.crossed_paired`: a two-way bootstrap
  over seeds and windows for the interval and p, and the sign test over windows averaged over the
  seeds).

Rows come from `sweep_report.gather`; nothing here reads files.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from lsa_ds.errors import UserError
from lsa_ds.eval.stats import across_seeds, crossed_paired, paired
from lsa_ds.eval.tables import markdown_table, number, value
from lsa_ds.rundir.metrics import length_keys
from lsa_ds.sweep.spec import label

SEED_KEY = "train.seed"
ENTROPY_PREFIX = "misalign_entropy"
VARIANTS = ("last", "overlap")


def misalignment_of(row: dict, variant: str) -> dict:
    """The `lsa eval` misalignment entry of one variant of a gathered run ({} when absent)."""
    return ((row["eval"] or {}).get("misalignment") or {}).get(variant) or {}


def numbers(row: dict) -> dict[str, float]:
    """One finished run's numbers the arm view averages over seeds, in report order: training-eval
    loss@N, misalignment, entropy (when logged), CE gap; then `lsa eval` loss (ln ppl) at every
    length, misalignment SCE / SKL and entropy per variant, passkey accuracy, copy retrieval (token
    accuracy inside / beyond L0 and with a context of L0), and the overlap misalignment split by the
    predicted token's class (SKL and SCE per class; the cut class's part of the unsplit SKL)."""
    t, ev = row["train"], row["eval"] or {}
    out = {f"loss@{n}": v for n, v in sorted(length_keys(t).items())}
    for k in ("misalign_sce", "misalign_skl", *sorted(k for k in t if k.startswith(ENTROPY_PREFIX)), "ce_gap"):
        out[k] = t.get(k)
    for n, p in sorted(ev.get("ppl", {}).items()):
        out[f"eval loss@{n}"] = math.log(p["ppl"]) if p.get("ppl") else None
    for v in VARIANTS:
        for m in ("sce", "skl", "entropy"):
            out[f"eval {m} ({v})"] = (misalignment_of(row, v).get(m) or {}).get("mean")
    out["eval passkey"] = ev.get("passkey")
    model = ev.get("model") or {}
    for where in ("inside_l0", "beyond_l0", "at_l0"):  # copy retrieval's graded token accuracy (eval/span_tasks.py)
        out[f"eval copy tokens ({where})"] = ((((model.get("copy") or {}).get(where) or {}).get("tokens") or {})
                                              .get("mean"))
    split = model.get("split") or {}
    for c in split.get("classes", []):  # overlap misalignment by predicted token (eval/misalign_split.py)
        for m in ("skl", "sce"):
            out[f"eval split {m} ({c['name']})"] = (c.get(m) or {}).get("value")
        if c["name"] == "cut" and split.get("skl"):
            out["eval split cut share of skl"] = c["share"] * c["skl"]["value"] / split["skl"]
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def units(row: dict) -> dict[str, tuple[str, np.ndarray]]:
    """The `lsa eval` numbers of one run that have one value per held-out window / sample, each
    with the fingerprint of what it read: {number: (fingerprint, values)}. Left out: numbers
    without a windows hash (nothing proves two runs read the same text) and arrays holding a
    non-finite value (report.json writes NaN as null)."""
    ev = row["eval"] or {}
    out = {}
    for n, p in sorted(ev.get("ppl", {}).items()):
        if p.get("per_window") and ev.get("ppl_sha"):
            out[f"eval loss@{n}"] = (f"{ev['ppl_sha']}@{n}", np.asarray(p["per_window"], dtype=np.float64))
    for v in VARIANTS:
        mis = misalignment_of(row, v)
        if mis.get("per_sample") and mis.get("windows_sha"):
            sce, skl = (np.asarray(mis["per_sample"][k], dtype=np.float64) for k in ("sce", "skl"))
            sha = f"{mis['windows_sha']}/{v}/seed{mis.get('seed')}"  # the eval seed draws the lengths and shifts
            out |= {f"eval sce ({v})": (sha, sce), f"eval skl ({v})": (sha, skl),
                    f"eval entropy ({v})": (sha, (sce - skl) / 2)}  # SCE = 2·entropy + SKL, sample by sample
    return {k: (sha, x) for k, (sha, x) in out.items() if x.size and np.isfinite(x).all()}


def arm_of_point(sweep, point) -> tuple[str, str, dict]:
    """(arm name, label, grid values without the seed) of one point: its run name less the seed."""

    rest = {k: v for k, v in point.values.items() if k != SEED_KEY}
    arm_label = label(rest, [k for k in sweep.keys() if k != SEED_KEY]) if rest else ""
    return (f"{sweep.name}-{arm_label}" if arm_label else sweep.name), arm_label, rest


def check_baseline(sweep, wanted: str | None) -> None:
    """Refuse a `--baseline` that names no arm, before anything trains (one line, exit 2)."""
    if wanted is None:
        return
    if SEED_KEY not in sweep.keys():
        raise UserError(f"--baseline {wanted}: the sweep {sweep.name} has no arms (train.seed is not a grid key)")
    arms = {arm_of_point(sweep, p)[:2] for p in sweep.points}
    if not any(wanted in pair for pair in arms):
        raise UserError(f"--baseline {wanted}: not one of the arms {', '.join(sorted(n for n, _ in arms))}")


def _baseline(arms: list[dict], wanted: str | None) -> tuple[dict | None, str]:
    if wanted:
        hit = [a for a in arms if wanted in (a["name"], a["label"])]
        if not hit:
            raise UserError(f"--baseline {wanted}: not one of the arms {', '.join(a['name'] for a in arms)}")
        return hit[0], "chosen by name"
    off = [a for a in arms if a["align_off"]]
    if not off:
        return None, "no arm has alignment off (align.enabled: false) and none was named"
    return off[0], "alignment off" + (f"; the first of {len(off)} such arms" if len(off) > 1 else "")


def group_arms(sweep, rows: list[dict]) -> list[dict] | None:
    """The sweep's arms (finished runs only: a run still training would mix an early checkpoint
    in), or None when the grid has no seeds or every arm has one point."""
    if SEED_KEY not in sweep.keys():
        return None
    groups: dict[str, dict] = {}
    for point, row in zip(sweep.points, rows[len(sweep.requires):]):
        name, arm_label, rest = arm_of_point(sweep, point)
        arm = groups.setdefault(json.dumps(rest, sort_keys=True, default=str), {
            "name": name, "label": arm_label, "values": rest,
            "align_off": rest.get("align.enabled", point.recipe.align.enabled) is False, "planned": [],
            "runs": {}, "units": {}, "rows": {}})
        seed = point.values.get(SEED_KEY)
        arm["planned"].append(seed)
        if row["status"] == "finished":
            arm["runs"][seed], arm["units"][seed], arm["rows"][seed] = numbers(row), units(row), row
    arms = list(groups.values())
    return arms if any(len(a["planned"]) > 1 for a in arms) else None


def _seed_paired(a: dict, base: dict, m: str, n_boot: int) -> dict | None:
    common = [s for s in a["seeds"] if m in a["runs"][s] and m in base["runs"].get(s, {})]
    if not common:
        return None
    pair = paired([a["runs"][s][m] for s in common], [base["runs"][s][m] for s in common],
                  interval=across_seeds, n_boot=n_boot if len(common) > 1 else 0)
    return {"seeds": common, **pair.to_dict()}


def _window_paired(a: dict, base: dict, m: str, n_boot: int) -> dict | None:
    """Seeds × windows pairing of number m over the seeds whose runs, in both arms, all read the
    same windows (the most common fingerprint, when some seed read other text)."""

    by_print: dict[str, list] = {}
    for s in a["seeds"]:
        mine, theirs = a["units"][s].get(m), base["units"].get(s, {}).get(m)
        if mine and theirs and mine[0] == theirs[0] and mine[1].shape == theirs[1].shape:
            by_print.setdefault(mine[0], []).append(s)
    if not by_print:
        return None
    common = max(by_print.values(), key=len)
    pair = crossed_paired([a["units"][s][m][1] for s in common], [base["units"][s][m][1] for s in common], n_boot)
    return {**pair.to_dict(), "seeds": common}  # the seeds themselves, not just their count


def arm_view(sweep, rows: list[dict], baseline: str | None = None, n_boot: int = 10000) -> dict | None:
    """Per arm and number the mean over finished seeds with its across-seeds 95% interval, and the
    paired differences from the baseline arm (seed by seed, and seeds × windows). None when the
    grid has no seeds."""
    arms = group_arms(sweep, rows)
    if arms is None:
        return None

    base, why = _baseline(arms, baseline)
    metrics = list(dict.fromkeys(k for a in arms for run in a["runs"].values() for k in run))
    window_metrics = list(dict.fromkeys(k for a in arms for u in a["units"].values() for k in u))
    for a in arms:
        a["seeds"] = sorted(a["runs"], key=str)
        a["stats"] = {m: across_seeds(v).to_dict() for m in metrics
                      if (v := [a["runs"][s][m] for s in a["seeds"] if m in a["runs"][s]])}
        a["paired"], a["window_paired"] = {}, {}
        if base is None or a is base:
            continue
        a["paired"] = {m: p for m in metrics if (p := _seed_paired(a, base, m, n_boot))}
        a["window_paired"] = {m: p for m in window_metrics if (p := _window_paired(a, base, m, n_boot))}
    return {"seed_key": SEED_KEY, "baseline": base and base["name"], "baseline_why": why, "metrics": metrics,
            "n_boot": n_boot, "arms": arms}


# ------------------------------------------------------------------------------------ output
def _ci(d: dict | None, spec: str = ".4f", mean: str = "mean") -> str:
    """mean [lo, hi]; `mean` names the centre's key (BootCI calls it value)."""
    if not d or d["lo"] is None or not math.isfinite(d["lo"]):
        return number(d and d[mean], spec) + (" (1 seed)" if d else "")
    return f"{d[mean]:{spec}} [{d['lo']:{spec}}, {d['hi']:{spec}}]"


def _seeds(a: dict) -> str:
    waiting = [s for s in a["planned"] if s not in a["runs"]]
    return (f"seeds {', '.join(map(value, a['seeds'])) or 'none finished'}"
            + (f"; {', '.join(map(value, waiting))} not finished" if waiting else ""))


def headline(view: dict) -> list[str]:
    """The numbers of the summary tables: `lsa eval` loss at L and above (the training length most
    runs have), then misalignment and entropy at the last position, SKL over the overlap, passkey."""
    lens = [r["eval"]["model"].get("train_len") for a in view["arms"] for r in a["rows"].values()
            if (r["eval"] or {}).get("model")]
    L = max(set(lens), key=lens.count) if lens else 0
    have = set(view["metrics"])
    loss = [m for m in view["metrics"] if m.startswith("eval loss@") and int(m.split("@")[1]) >= (L or 0)]
    rest = ["eval skl (last)", "eval sce (last)", "eval entropy (last)", "eval skl (overlap)", "eval split skl (cut)",
            "eval copy tokens (beyond_l0)", "eval passkey"]
    return loss + [m for m in rest if m in have]


def summary_markdown(view: dict) -> list[str]:
    """Two compact tables, arms as rows: the headline numbers over seeds, and their seeds ×
    windows difference from the baseline."""
    cols = headline(view)
    if not cols:
        return []
    arms = view["arms"]
    out = ["## Summary", "", "Per arm, mean over its finished seeds [95% interval across seeds, Student t]; "
           "`lsa eval` numbers (loss = ln perplexity at each context length; misalignment and entropy of the "
           "predictions at the last position; symmetric KL over the overlap, and over its pairs whose token is a "
           "copy of a source only the long view sees (split, cut); copy-retrieval token accuracy beyond L0; "
           "passkey accuracy). The sections "
           "below have every number.", ""]
    out += markdown_table(["arm", "seeds", *cols], [[a["name"], str(len(a["seeds"])), *[_ci(a["stats"].get(m), ".3f") for m in cols]]
                                            for a in arms])
    pair_cols = [m for m in cols if any(m in a["window_paired"] for a in arms)]
    body = [[a["name"], *[(f"{_ci(p['diff'], '+.3f', mean='value')} p {p['p_boot']:.2g}" if (p := a["window_paired"].get(m))
                          else "–") for m in pair_cols]] for a in arms if a["window_paired"]]
    if body:
        out += [f"Against the baseline `{view['baseline']}`: arm minus baseline over the same seeds × windows "
                "[95% two-way bootstrap interval] and its bootstrap p (details and sign tests below). Negative is "
                "lower loss, less misalignment, sharper predictions.", ""]
        out += markdown_table(["arm", *pair_cols], body)
    return out


def arms_markdown(view: dict) -> list[str]:
    arms, metrics = view["arms"], view["metrics"]
    out = [*summary_markdown(view), "## Arms over seeds", "",
           f"Points that differ only in `{view['seed_key']}` form one arm. Each cell: the mean over the arm's "
           "finished seeds [95% interval across seeds: Student t with n − 1 degrees of freedom — with 3–5 "
           "seeds the normal 1.96 would be far too narrow]. Rows without `eval` come from the training-time "
           "evaluation (metrics.jsonl); `eval …` rows from `lsa eval` (loss = ln perplexity; sce / skl / "
           "entropy: misalignment and the mean entropy of the two views' predictions, SCE = 2·entropy + SKL; "
           "passkey accuracy).", ""]
    out += markdown_table(["number", *[f"{a['name']} ({_seeds(a)})" for a in arms]],
                  [[m, *[_ci(a["stats"].get(m)) for a in arms]] for m in metrics] or [["–"] * (len(arms) + 1)])
    if view["baseline"] is None:
        return out + [f"No paired comparison: {view['baseline_why']}.", ""]
    body = [[a["name"], m, ", ".join(map(value, p["seeds"])), _ci(p["diff"], "+.4f"),
             f"{p['better']} / {p['worse']}", f"{p['p_sign']:.3g}", number(p.get("p_boot"), ".3g")]
            for a in arms for m, p in a["paired"].items()]
    out += [f"## Arms against the baseline `{view['baseline']}` ({view['baseline_why']}), seed by seed", "",
            "Seed i of each arm minus seed i of the baseline, over the seeds both finished: the mean difference "
            "[95% interval across seeds, Student t], how many seeds were lower / higher than the baseline's, the "
            "two-sided exact sign test (3 seeds cannot go below p = 0.25) and a two-sided bootstrap p of a zero "
            f"mean difference ({view['n_boot']} resamples; optimistic with so few seeds — read it beside the "
            "interval). Negative is lower loss, less misalignment or lower entropy.", ""]
    out += markdown_table(["arm", "number", "seeds", "difference", "lower / higher", "p (sign)", "p (bootstrap)"],
                  body or [["–"] * 7])
    body = [[a["name"], m, f"{len(p['seeds'])} × {p['units']}", _ci(p["diff"], "+.4f", mean="value"),
             f"{p['better']} / {p['worse']}", f"{p['p_sign']:.3g}", number(p["p_boot"], ".3g")]
            for a in arms for m, p in a["window_paired"].items()]
    if body:
        out += [f"## Arms against the baseline `{view['baseline']}`, seeds × windows", "",
                "The `lsa eval` numbers kept per held-out window (loss) or sample (misalignment, entropy): the arm "
                "minus the baseline on the very same window under the very same seed, pooled. Interval and p: a "
                f"two-way bootstrap ({view['n_boot']} resamples; seeds and windows drawn independently, one window "
                "draw shared by the drawn seeds, since every seed read the same text), so both the training noise "
                "and the choice of text are in them — with 3 seeds the seed level has only 10 distinct draws and "
                "the interval under-covers (≈ 92% for a nominal 95% in a simulation, tests/eval/test_eval_stats.py); "
                "with 1 seed there is no training noise in it at all. Lower / higher and the sign test: windows "
                "whose difference, averaged over the seeds, is below / above zero — conditional on these seeds, so "
                "with 64 windows it can be small while the seed-level difference is not.", ""]
        out += markdown_table(["arm", "number", "seeds × windows", "difference [95%]", "windows lower / higher", "p (sign)",
                       "p (bootstrap)"], body)
    return out


def write_arms_csv(view: dict, path: Path) -> None:
    """One row per arm and number: the across-seeds statistics, the seed-paired and the
    seeds × windows paired difference from the baseline."""
    keys = list(dict.fromkeys(k for a in view["arms"] for k in a["values"]))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["arm", *keys, "number", "seeds", "n", "mean", "lo", "hi", "std", "baseline", "paired_seeds",
                         "diff", "diff_lo", "diff_hi", "lower", "higher", "p_sign", "p_boot", "windows",
                         "wdiff", "wdiff_lo", "wdiff_hi", "wlower", "whigher", "wp_sign", "wp_boot"])
        for a in view["arms"]:
            for m in dict.fromkeys([*view["metrics"], *a["window_paired"]]):
                s, p, w = a["stats"].get(m), a["paired"].get(m), a["window_paired"].get(m)
                cells = [s["n"], s["mean"], s["lo"], s["hi"], s["std"]] if s else [0, "", "", "", ""]
                pair = ([view["baseline"], ";".join(map(value, p["seeds"])), p["diff"]["mean"], p["diff"]["lo"],
                         p["diff"]["hi"], p["better"], p["worse"], p["p_sign"], p.get("p_boot")] if p else [""] * 9)
                wide = ([f"{len(w['seeds'])}x{w['units']}", w["diff"]["value"], w["diff"]["lo"], w["diff"]["hi"],
                         w["better"], w["worse"], w["p_sign"], w["p_boot"]] if w else [""] * 8)
                row = [a["name"], *[value(a["values"].get(k, "")) for k in keys], m,
                       ";".join(map(value, a["seeds"])), *cells, *pair, *wide]
                writer.writerow(["" if c is None or (isinstance(c, float) and not math.isfinite(c)) else c for c in row])


def arms_plot(view: dict, path: Path) -> Path | None:
    """Three panels: `lsa eval` loss versus length per arm (mean over seeds, t interval); each
    arm's seeds × windows difference from the baseline at every length (bootstrap interval); and
    every run's entropy against its symmetric KL at the last position (sharpening moves a run
    down, aligning moves it left)."""
    arms = [a for a in view["arms"] if a["seeds"]]
    lengths = sorted({int(m.split("@")[1]) for m in view["metrics"] if m.startswith("eval loss@")})
    if not arms or not lengths:
        return None

    matplotlib.use("Agg")

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, a in enumerate(arms):
        pts = [(n, a["stats"][f"eval loss@{n}"]) for n in lengths if f"eval loss@{n}" in a["stats"]]
        xs, ss = [n for n, _ in pts], [s for _, s in pts]
        err = [[s["mean"] - s["lo"] if math.isfinite(s["lo"]) else 0 for s in ss],
               [s["hi"] - s["mean"] if math.isfinite(s["hi"]) else 0 for s in ss]]
        axes[0].errorbar(xs, [s["mean"] for s in ss], yerr=err, marker="o", capsize=3, color=f"C{i % 10}",
                         label=f"{a['label'] or a['name']} (n={len(a['seeds'])})")
        paired = [(n, a["window_paired"].get(f"eval loss@{n}")) for n in lengths]
        paired = [(n, p["diff"]) for n, p in paired if p]
        if paired:
            xs = [n * (1 + 0.04 * (i - len(arms) / 2)) for n, _ in paired]  # side by side around each length
            axes[1].errorbar(xs, [d["value"] for _, d in paired], yerr=[[max(0.0, d["value"] - d["lo"]) for _, d in paired],
                             [max(0.0, d["hi"] - d["value"]) for _, d in paired]], marker="o", ls="", capsize=3, color=f"C{i % 10}")
        runs = [(u["eval skl (last)"], u["eval entropy (last)"]) for u in a["runs"].values()
                if "eval skl (last)" in u and "eval entropy (last)" in u]
        if runs:
            axes[2].scatter(*zip(*runs), color=f"C{i % 10}", s=22)
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_xlabel("context length (tokens)")
        ax.grid(True, alpha=0.3)
    axes[0].set(ylabel="held-out loss (ln ppl)", title="lsa eval, mean over seeds [t 95%]")
    axes[0].legend(fontsize=7)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set(ylabel="arm − baseline (nats)", title=f"paired seeds × windows vs {view['baseline']} [bootstrap 95%]")
    axes[2].set(xlabel="symmetric KL (last position)", ylabel="entropy of the predictions (last)",
                title="each run: aligning moves left, sharpening moves down")
    for ax in axes:
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
