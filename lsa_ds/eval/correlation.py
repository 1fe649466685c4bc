"""The paper's Table 1 across evaluated models: how well misalignment and training loss predict
long-context quality (held-out loss above the training length, retrieval, benchmarks), with
bootstrap intervals; read from the plain report dicts of `lsa eval` (and `lsa sweep --report`)."""

from __future__ import annotations

import math

from lsa_ds.eval.stats import bootstrap_ci, pearson, spearman
from lsa_ds.eval.tables import markdown_table, number

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
    if any(m.get("copy") for m in models):  # copy retrieval: graded token accuracy (exact match sits at 0 here)
        for where, label in (("at_l0", "copy tokens, context L0"), ("beyond_l0", "copy tokens ≥ L0")):
            out.append((label, lambda m, where=where: (((m.get("copy") or {}).get(where) or {}).get("tokens") or {})
                        .get("mean")))
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
