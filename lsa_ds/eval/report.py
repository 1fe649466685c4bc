"""The evaluation report: report.json (everything measured), report.md (tables), PNG plots, and
the cross-model correlation analysis of the paper's Table 1.

Everything here reads the plain report dict `cli` assembles, so a report can be re-rendered or
post-processed from report.json alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lsa_ds.errors import UserError
from lsa_ds.eval import plots
from lsa_ds.eval.stats import bootstrap_ci, paired, pearson, spearman
from lsa_ds.eval.tables import markdown_table, number
from lsa_ds.rundir.curves import FINAL_LOSS_NOTE

MIN_CORRELATION_MODELS = 4
PAPER_ABS_R = {"sce": 0.85, "loss": 0.62}
"""The paper's Table 1: |r| across models of its misalignment metric (SCE, last position) and of
the training loss with long-context quality."""


def _misalign_stat(model: dict, key: str, variant: str | None = None) -> float | None:
    mis = model.get("misalignment") or {}
    entry = mis.get(variant) if variant else (mis.get("last") or mis.get("overlap"))
    return entry[key]["mean"] if entry else None


def _ppl_at(model: dict, length: float) -> float | None:
    lengths = (model.get("perplexity") or {}).get("lengths", [])
    return next((p["ppl"] for p in lengths if math.isclose(p["length"], length)), None)


def _ln(x: float | None) -> float | None:
    return math.log(x) if x is not None and x > 0 else None


def _variant(models: list[dict]) -> str:
    """The paper's last-position variant, unless too few models have it and overlap has more."""
    have = {v: sum(bool((m.get("misalignment") or {}).get(v)) for m in models) for v in ("last", "overlap")}
    return "overlap" if have["last"] < MIN_CORRELATION_MODELS and have["overlap"] > have["last"] else "last"


def _loss_at_l(models: list[dict]) -> tuple[str, object]:
    """Held-out loss at the training length (ln of its perplexity at L) where enough models have
    it, else the final training loss — one source for every model, never a mix."""
    def heldout(m: dict) -> float | None:
        return _ln(_ppl_at(m, m["train_len"])) if m.get("train_len") else None

    n_heldout = sum(heldout(m) is not None for m in models)
    n_train = sum(m.get("train_loss") is not None for m in models)
    if n_heldout >= MIN_CORRELATION_MODELS or n_heldout >= n_train:
        return "held-out loss at L", heldout
    return "final training loss", lambda m: m.get("train_loss")


def _targets(models: list[dict]) -> list[tuple[str, object]]:
    """Held-out loss at every evaluated length above the training length (by multiple of L when
    every model's L is known, so models of different L compare at 2L, 4L, ...), then retrieval and
    benchmark accuracy where measured."""
    with_ppl = [m for m in models if m.get("perplexity")]
    out = []
    if with_ppl and all(m.get("train_len") for m in with_ppl):
        train_lens = {m["train_len"] for m in with_ppl}
        ratios = sorted({round(p["length"] / m["train_len"], 4) for m in with_ppl
                         for p in m["perplexity"]["lengths"] if p["length"] > m["train_len"]})
        for r in ratios:
            tokens = f" ({round(r * next(iter(train_lens)))} tokens)" if len(train_lens) == 1 else ""
            out.append((f"loss@{r:g}×L{tokens}", lambda m, r=r: _ln(_ppl_at(m, r * m["train_len"]))))
    elif with_ppl:  # training length unknown: every evaluated length above the shortest known L
        floor = min((m["train_len"] for m in with_ppl if m.get("train_len")), default=0)
        for n in sorted({p["length"] for m in with_ppl for p in m["perplexity"]["lengths"] if p["length"] > floor}):
            out.append((f"loss@{n}", lambda m, n=n: _ln(_ppl_at(m, n))))
    for key, label, value in (("passkey", "passkey accuracy", "accuracy_overall"),
                              ("niah", "needle-in-a-haystack accuracy", "accuracy_overall"),
                              ("longbench", "LongBench average", "average"), ("babilong", "BABILong average", "average")):
        if any(m.get(key) for m in models):
            out.append((label, lambda m, key=key, value=value: (m.get(key) or {}).get(value)))
    return out


def _points(models: list[dict], x_of, y_of) -> list[tuple[float, float, str]]:
    points = [(x_of(m), y_of(m), m["name"]) for m in models]
    return [(x, y, n) for x, y, n in points
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]


def _table_pairs(models: list[dict], n_boot: int, seed: int, groups: dict[str, str] | None = None) -> dict:
    """Every predictor × target pair: Pearson and Spearman r with bootstrap 95% intervals."""
    variant = _variant(models)
    loss_label, loss_of = _loss_at_l(models)
    predictors = [(f"misalignment SKL ({variant})", lambda m: _misalign_stat(m, "skl", variant), None),
                  (f"misalignment SCE ({variant})", lambda m: _misalign_stat(m, "sce", variant), PAPER_ABS_R["sce"]),
                  (loss_label, loss_of, PAPER_ABS_R["loss"])]
    targets = _targets(models)
    pairs = []
    for p_label, x_of, paper in predictors:
        for t_label, y_of in targets:
            points = _points(models, x_of, y_of)
            entry = {"predictor": p_label, "target": t_label, "n": len(points), "paper_abs_r": paper}
            if len(points) < MIN_CORRELATION_MODELS:
                pairs.append({**entry, "skipped": f"fewer than {MIN_CORRELATION_MODELS} models have both"})
                continue
            xs, ys = [q[0] for q in points], [q[1] for q in points]
            same = next((side for side, v in (("predictor", xs), ("target", ys)) if len(set(v)) == 1), None)
            if same:
                pairs.append({**entry, "skipped": f"the {same} is {(xs if same == 'predictor' else ys)[0]:g} "
                                                  "for every model: nothing to correlate"})
                continue
            labels = [groups.get(q[2], q[2]) for q in points] if groups else None
            r, rho = (bootstrap_ci(xs, ys, f, n_boot, seed, labels) for f in (pearson, spearman))
            pairs.append({**entry, "pearson": r.value, "spearman": rho.value, "pearson_ci": r.to_dict(),
                          "spearman_ci": rho.to_dict(), "points": points})
    return {"misalignment_variant": variant, "loss_at_L": loss_label, "targets": [t for t, _ in targets],
            "n_boot": n_boot, "resampled": "groups" if groups else "models",
            "groups": len(set(groups.get(m["name"], m["name"]) for m in models)) if groups else None, "pairs": pairs}


def correlate(models: list[dict], n_boot: int = 2000, seed: int = 0, groups: dict[str, str] | None = None) -> dict:
    """How well misalignment and training loss predict long-context quality across models (the
    paper's Table 1). Needs at least 4 models.

    `table` holds every predictor × target pair with bootstrap 95% intervals (see `_table_pairs`);
    `predictors` keeps the first analysis — each predictor against perplexity at the longest
    length, with the final training loss — for older readers. `groups` ({model name: group},
    e.g. a sweep's arms) makes the bootstrap resample whole groups."""
    if len(models) < MIN_CORRELATION_MODELS:
        return {"skipped": f"needs at least {MIN_CORRELATION_MODELS} models (got {len(models)})"}
    out = {"length": None, "target": None, "predictors": [], "table": _table_pairs(models, n_boot, seed, groups)}
    with_ppl = [m for m in models if m.get("perplexity")]
    if not with_ppl:
        return out
    length = max(p["length"] for m in with_ppl for p in m["perplexity"]["lengths"])
    out.update(length=length, target=f"perplexity at {length} tokens")
    for label, value in (("misalignment (SCE)", lambda m: _misalign_stat(m, "sce")),
                         ("misalignment (symmetric KL)", lambda m: _misalign_stat(m, "skl")),
                         ("final training loss", lambda m: m.get("train_loss"))):
        points = _points(with_ppl, value, lambda m: _ppl_at(m, length))
        if len(points) < MIN_CORRELATION_MODELS:
            out["predictors"].append({"predictor": label, "n": len(points),
                                      "skipped": f"fewer than {MIN_CORRELATION_MODELS} models have it"})
            continue
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        out["predictors"].append({"predictor": label, "n": len(points), "pearson": pearson(xs, ys),
                                  "spearman": spearman(xs, ys), "points": points})
    return out


# ----------------------------------------------------------------------------------- markdown
def windows_groups(models: list[dict]) -> dict[str, str]:
    """{model name: letter} of the perplexity windows each read (A = the first model's), or {}
    when all read the very same windows: rows with different letters must not be read as one
    column."""
    shas = [(m["name"], m["perplexity"].get("windows_sha")) for m in models if m.get("perplexity")]
    order = list(dict.fromkeys(sha for _, sha in shas))
    return {} if len(order) <= 1 else {name: "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[order.index(sha) % 26] for name, sha in shas}


def _perplexity_md(models: list[dict], data: dict | None = None) -> list[str]:
    rows = [m for m in models if m.get("perplexity")]
    if not rows:
        return []
    lengths = sorted({p["length"] for m in rows for p in m["perplexity"]["lengths"]})
    first = rows[0]["perplexity"]
    groups = windows_groups(rows)
    counts = sorted({m["perplexity"]["windows"] for m in rows})
    windows = (f"{counts[0]} windows" if len(counts) == 1
               else "windows (" + ", ".join(f"{m['name']} {m['perplexity']['windows']}" for m in rows) + ")")
    body = []
    for m in rows:
        by_len = {p["length"]: p for p in m["perplexity"]["lengths"]}
        cells = [f"{by_len[n]['ppl']:.2f} [{by_len[n]['ppl_ci'][0]:.2f}, {by_len[n]['ppl_ci'][1]:.2f}]"
                 if n in by_len else "–" for n in lengths]
        body.append([m["name"], *([groups[m["name"]]] if groups else []), str(m["train_len"]), *cells])
    origin = f" of {data['origin']}" if data and data.get("origin") else ""
    marked = (" Windows: rows with different letters read different token windows (another tokenizer or data); "
              "their perplexities are per token of their own windows, not one column, and they are not paired."
              if groups else "")
    return ["## Perplexity versus context length", "",
            f"Held-out perplexity{origin} on the same final {first['score_tokens']} tokens of {windows} at "
            f"every length (95% interval over windows). L is each model's training length.{marked}", "",
            *markdown_table(["model", *(["windows"] if groups else []), "L", *[f"{n}" for n in lengths]], body)]


def _misalignment_md(models: list[dict]) -> list[str]:
    body = []
    for m in models:
        for variant, r in (m.get("misalignment") or {}).items():
            body.append([m["name"], str(r["seq_len"]), variant,
                         f"{r['sce']['mean']:.4f} [{r['sce']['lo']:.4f}, {r['sce']['hi']:.4f}]",
                         f"{r['skl']['mean']:.4f} [{r['skl']['lo']:.4f}, {r['skl']['hi']:.4f}]",
                         f"{r['entropy']['mean']:.4f}" if "entropy" in r else "–", str(r["samples"])])
    if not body:
        return []
    return ["## Long-short misalignment", "",
            "last: two different context lengths l1 != l2 in [L/2, L] ending at the same token, divergence at that position; overlap: "
            "context of L tokens versus the same cut by E ~ U[1, L/2], averaged over shared positions. "
            "Mean over samples with a 95% normal interval (its lower end cut at 0: none of these can be negative). SCE includes both entropies (2 × entropy for identical "
            "distributions); symmetric KL is 0 for identical ones; entropy is the mean entropy of the two views' "
            "predictions, (SCE − symmetric KL) / 2 exactly, so a lower SCE from sharper predictions shows here.", "",
            *markdown_table(["model", "L", "variant", "SCE", "symmetric KL", "entropy", "samples"], body)]


NIAH_NOTE = ("The passkey prompt (instruction, needle \"The pass key is K. Remember it. K is the pass key.\", "
             "question) with held-out text of this report's data as the haystack instead of the repeated sentences.")


def _passkey_md(models: list[dict], key: str = "passkey", title: str = "Passkey retrieval", note: str = "") -> list[str]:
    rows = [m for m in models if m.get(key)]
    if not rows:
        return []
    lengths = sorted({n for m in rows for n in m[key]["lengths"]})
    body = []
    for m in rows:
        pk = m[key]
        by_len = dict(zip(pk["lengths"], pk["accuracy_by_length"]))
        body.append([m["name"], *[number(by_len.get(n), ".2f") for n in lengths], number(pk["accuracy_overall"], ".2f")])
    pk0 = rows[0][key]
    return [f"## {title}", "", *([note, ""] if note else []),
            f"Accuracy per prompt length (tokens), averaged over depths {', '.join(f'{d:g}' for d in pk0['depths'])}; "
            f"{pk0['samples_per_cell']} keys per cell; – = the length cannot hold the prompt.", "",
            *markdown_table(["model", *[str(n) for n in lengths], "all"], body)]


def _benchmark_md(models: list[dict], key: str, title: str) -> list[str]:
    rows = [m for m in models if m.get(key)]
    if not rows:
        return []
    tasks = sorted({t for m in rows for t in m[key]["tasks"]})
    body = [[m["name"], *[number(m[key]["tasks"].get(t, {}).get("score"), ".2f") for t in tasks],
             number(m[key]["average"], ".2f")] for m in rows]
    metrics = ", ".join(f"{t}: {rows[0][key]['tasks'][t]['metric']}" for t in tasks if t in rows[0][key]["tasks"])
    lines = [f"## {title}", "", f"Scores × 100 ({metrics}).", "", *markdown_table(["model", *tasks, "average"], body)]
    for m in rows:  # LongBench-E buckets / BABILong lengths
        for t, entry in m[key]["tasks"].items():
            extra = entry.get("buckets") or entry.get("by_length")
            if extra and len(extra) > 0:
                lines.append(f"- {m['name']} / {t}: " + ", ".join(f"{k} {number(v, '.2f')}" for k, v in extra.items()))
    return lines + [""]


def _r_cell(pair: dict, key: str) -> str:
    ci = pair.get(f"{key}_ci")
    return "–" if not ci else f"{number(ci['value'], '+.2f')} [{number(ci['lo'], '+.2f')}, {number(ci['hi'], '+.2f')}]"


def correlation_md(corr: dict | None) -> list[str]:
    if not corr:
        return []
    title = "## Misalignment versus long-context quality (the paper's Table 1)"
    if "skipped" in corr:
        return [title, "", f"Not computed: {corr['skipped']}.", ""]
    table = corr.get("table")
    if not table or not table["pairs"]:
        return [title, "", "Not computed: no long-context target (perplexity above L, passkey, benchmarks).", ""]
    n_models = max(p["n"] for p in table["pairs"])
    loss = ("the held-out loss at L (ln perplexity at each model's training length)"
            if table["loss_at_L"] == "held-out loss at L" else
            "the final training loss (too few models have a held-out perplexity at their L)")
    variant = ("the last-position variant, as the paper defines it" if table["misalignment_variant"] == "last"
               else "the overlap variant (too few models have the last-position one)")
    body = [[p["predictor"], p["target"], str(p["n"]), _r_cell(p, "pearson"), _r_cell(p, "spearman"),
             number(p["paper_abs_r"], ".2f"), p.get("skipped", "")] for p in table["pairs"]]
    return [title, "",
            f"Correlation across models (up to {n_models}) of each predictor with each long-context target: Pearson r "
            f"and Spearman ρ with 95% percentile-bootstrap intervals ({table['n_boot']} resamples of "
            + (f"the {table['groups']} groups of models, each drawn whole: the seeds of one arm share its effect, so "
               "drawing them one by one would overstate the evidence; "
               if table.get("resampled") == "groups" else "the models; ")
            + "resamples where a side is constant are dropped). Targets: held-out loss (ln perplexity) at every "
            "evaluated length above the training length L, and retrieval / benchmark accuracy where measured. "
            f"Predictors: misalignment of {variant}, and {loss}. Less misalignment and lower loss are better, so a "
            "useful predictor has r > 0 against loss and r < 0 against accuracy. The paper's Table 1 reports "
            f"|r| = {PAPER_ABS_R['sce']:.2f} for its misalignment metric (SCE) and {PAPER_ABS_R['loss']:.2f} "
            "for the training loss against long-context quality (its own models and benchmarks, not ours). With a "
            "handful of models the intervals are wide: read their width before the point estimate.", "",
            *markdown_table(["predictor", "target", "models", "Pearson r [95%]", "Spearman ρ [95%]", "paper \\|r\\|",
                             "note"], body)]


def paired_against(models: list[dict], baseline: str | None = None) -> dict:
    """Every model minus the baseline, window by window (perplexity: per-window NLL at each length)
    and sample by sample (misalignment), where both read the very same windows."""

    names = [m["name"] for m in models]
    base_name = baseline or names[0]
    if base_name not in names:
        raise UserError(f"--baseline {base_name}: not one of the evaluated models ({', '.join(names)})")
    base = models[names.index(base_name)]
    out = {"baseline": base_name, "models": []}
    for m in models:
        if m is base:
            continue
        rows, why = [], []
        bp, mp = base.get("perplexity") or {}, m.get("perplexity") or {}
        if bp and mp and bp.get("windows_sha") != mp.get("windows_sha"):
            why.append(_other_windows("perplexity", m, base))
        if bp and mp and bp.get("windows_sha") == mp.get("windows_sha"):
            b_len = {p["length"]: p for p in bp["lengths"]}
            for p in mp["lengths"]:
                if p["length"] in b_len and p.get("per_window"):
                    rows.append({"metric": f"loss@{p['length']}",
                                 **paired(p["per_window"], b_len[p["length"]]["per_window"]).to_dict()})
        for variant, r in (m.get("misalignment") or {}).items():
            b = (base.get("misalignment") or {}).get(variant)
            if b and b.get("windows_sha") != r.get("windows_sha"):
                why.append(_other_windows(f"misalignment ({variant})", m, base))
            if b and b.get("windows_sha") == r.get("windows_sha") and r.get("per_sample"):
                for kind in ("skl", "sce"):
                    rows.append({"metric": f"misalign {kind.upper()} ({variant})",
                                 **paired(r["per_sample"][kind], b["per_sample"][kind]).to_dict()})
                # entropy of the predictions, sample by sample: SCE = 2·entropy + SKL
                ent = [[(s - k) / 2 for s, k in zip(x["per_sample"]["sce"], x["per_sample"]["skl"])] for x in (r, b)]
                rows.append({"metric": f"entropy ({variant})", **paired(*ent).to_dict()})
        out["models"].append({"name": m["name"], "rows": rows, "not_paired": why})
    return out


def _other_windows(metric: str, m: dict, base: dict) -> str:
    """Why a metric of `m` is not paired with the baseline's, in one phrase."""
    tok_m, tok_b = (x.get("tokenizer", {}).get("fingerprint") for x in (m, base))
    why = (f"another tokenizer (fingerprint {tok_m} vs {tok_b})" if tok_m != tok_b
           else "another training length" if metric.startswith("misalignment") and m.get("train_len") != base.get("train_len")
           else "other held-out data")
    return f"{metric}: read other windows than {base['name']} ({why})"


def _paired_md(paired: dict | None) -> list[str]:
    if not paired or not any(m["rows"] or m.get("not_paired") for m in paired["models"]):
        return []
    body = [[m["name"], r["metric"], f"{r['diff']['mean']:+.4f} [{r['diff']['lo']:+.4f}, {r['diff']['hi']:+.4f}]",
             f"{r['better']} / {r['worse']}", f"{r['p_sign']:.3g}"] for m in paired["models"] for r in m["rows"]]
    unpaired = [f"- not paired: {m['name']}, {w}" for m in paired["models"] for w in m.get("not_paired", [])]
    return [f"## Paired differences against {paired['baseline']}", "",
            "Model minus baseline over the same held-out windows (loss) or samples (misalignment): mean difference "
            "with its 95% interval over windows/samples, how many were lower / higher than the baseline's, and the "
            "two-sided sign-test p-value. Negative is lower loss, less misalignment or sharper predictions (entropy). Only models that read the "
            "very same windows are paired (a model with another training length reads other misalignment windows).",
            "", *(markdown_table(["model", "metric", "difference", "lower / higher", "p (sign test)"], body) if body
                  else ["No model read the baseline's windows: nothing is paired.", ""]),
            *unpaired, *([""] if unpaired else [])]


def render_markdown(report: dict) -> str:
    models = report["models"]
    lines = ["# Evaluation report", "", f"`{report['command']}` — {report['created']}", "", "## Models", ""]
    lines += markdown_table(["model", "kind", "L", "final train loss", "held-out data"],
                            [[m["name"], m["kind"], str(m["train_len"]), number(m.get("train_loss"), ".4f"),
                              m.get("heldout", "–")] for m in models])
    lines += [f"Final train loss: {FINAL_LOSS_NOTE} (one step is one noisy batch).", ""]
    if (report.get("data") or {}).get("notice"):
        lines += [f"**Held-out data:** {report['data']['notice']}.", ""]
    lines += _perplexity_md(models, report.get("data")) + _misalignment_md(models) + _passkey_md(models)
    lines += _passkey_md(models, "niah", "Needle in a haystack", NIAH_NOTE)
    lines += _benchmark_md(models, "longbench", "LongBench") + _benchmark_md(models, "babilong", "BABILong")
    lines += _paired_md(report.get("paired")) + correlation_md(report.get("correlation"))
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report["plots"]] + [""]
    return "\n".join(lines)


def finite(obj):
    """NaN/inf -> None, so report.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_report(report: dict, out_dir: Path) -> Path:
    """Write the plots, report.json and report.md into out_dir; returns report.md's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    models = report["models"]
    data = (report.get("data") or {}).get("origin")
    data = f"held-out data: {data}" if data else None  # every figure names the data it shows
    made = [plots.perplexity_plot(models, out_dir / "perplexity_vs_length.png", data),
            plots.difference_plot(report.get("paired"), out_dir / "loss_difference_vs_length.png", data),
            plots.passkey_plot(models, out_dir / "passkey.png"),
            plots.passkey_plot(models, out_dir / "niah.png", "niah", f"needle in a haystack ({data or 'held-out text'})"),
            plots.misalignment_plot(models, out_dir / "misalignment.png", data)]
    if report.get("correlation") and "table" in report["correlation"]:
        made.append(plots.correlation_plot(report["correlation"], out_dir / "correlation.png"))
    report["plots"] = [p.name for p in made if p is not None]
    (out_dir / "report.json").write_text(json.dumps(finite(report), indent=2, default=str))
    md = out_dir / "report.md"
    md.write_text(render_markdown(report))
    return md
