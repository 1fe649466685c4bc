"""The evaluation report: report.json (everything measured), report.md (tables) and PNG plots;
the cross-model correlation analysis of the paper's Table 1 is `lsa_ds.eval.correlation`.

Everything here reads the plain report dict `cli` assembles, so a report can be re-rendered or
post-processed from report.json alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lsa_ds.errors import UserError
from lsa_ds.eval import plots
from lsa_ds.eval.correlation import correlation_md
from lsa_ds.eval.stats import paired
from lsa_ds.eval.tables import markdown_table, number
from lsa_ds.rundir.curves import FINAL_LOSS_NOTE


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


def _ci(x: dict | None, spec: str = ".2f") -> str:
    """"value [lo, hi]" of an interval dict (value or mean), or the missing mark."""
    if not x:
        return number(None)
    v = x.get("value", x.get("mean"))
    return f"{number(v, spec)} [{number(x['lo'], spec)}, {number(x['hi'], spec)}]"


def _copy_md(models: list[dict]) -> list[str]:
    rows = [m for m in models if m.get("copy")]
    if not rows:
        return []
    c0 = rows[0]["copy"]
    body = [[m["name"], str(m["train_len"]), _ci(c["at_l0"]["tokens"], ".3f"), _ci(c["inside_l0"]["tokens"], ".3f"),
             _ci(c["beyond_l0"]["tokens"], ".3f"), _ci(c["at_l0"]["exact"]), _ci(c["beyond_l0"]["exact"]),
             f"{c['at_l0']['exact']['n']} / {c['inside_l0']['exact']['n']} / {c['beyond_l0']['exact']['n']}"]
            for m in rows for c in [m["copy"]]]
    ctx, l0 = c0["context"], c0["l0"]
    return ["## Copy retrieval by distance", "",
            f"Each held-out copy of a repeated span, given its first {c0['prompt_tokens']} tokens, completed greedily "
            f"with at most {ctx} tokens of context, and again with {l0} (= L0, the shortest training length: every "
            "model then reads only positions it was trained on): token accuracy (the share of a copy's tokens "
            "predicted right given the true ones before them; mean over copies, 95% interval) and exact match "
            "(every token right; 95% Wilson interval), pooled over source-to-copy distances below L0 and from L0 "
            "on. `copy_by_distance.png` shows every distance bucket at the longer context.", "",
            *markdown_table(["model", "L", f"tokens, context {l0}", f"tokens < {l0}, context {ctx}",
                             f"tokens ≥ {l0}, context {ctx}", f"exact, context {l0}", f"exact ≥ {l0}, context {ctx}",
                             "copies"], body)]


def _split_md(models: list[dict]) -> list[str]:
    rows = [m for m in models if m.get("split")]
    if not rows:
        return []
    body = [[m["name"], str(s["seq_len"]), c["name"], f"{c['share']:.3f}", str(c["pairs"]), _ci(c["sce"], ".3f"),
             _ci(c["skl"], ".4f")] for m in rows for s in [m["split"]] for c in s["classes"]]
    return ["## Where misalignment comes from", "",
            "Overlap misalignment at each model's L, split by the token a pair predicts: **cut**, a copy whose "
            "source only the long view sees (the short view's cut removed it); **shared**, a copy whose source both "
            "views see; **unseen**, a copy whose source lies before both views; **plain**, text that is no copy. "
            "Share: the class's mean fraction of a window's pairs; share × class mean, summed, is the unsplit "
            "metric. 95% percentile-bootstrap intervals over windows. If the regularizer mostly penalises *cut* "
            "pairs, it penalises the long-range use that extension is for.", "",
            *markdown_table(["model", "L", "class", "share", "pairs", "SCE", "symmetric KL"], body)]


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
    lines += _passkey_md(models, "niah", "Needle in a haystack", NIAH_NOTE) + _copy_md(models) + _split_md(models)
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
            plots.misalignment_plot(models, out_dir / "misalignment.png", data),
            plots.copy_plot(models, out_dir / "copy_by_distance.png", data)]
    if report.get("correlation") and "table" in report["correlation"]:
        made.append(plots.correlation_plot(report["correlation"], out_dir / "correlation.png"))
    report["plots"] = [p.name for p in made if p is not None]
    (out_dir / "report.json").write_text(json.dumps(finite(report), indent=2, default=str))
    md = out_dir / "report.md"
    md.write_text(render_markdown(report))
    return md
