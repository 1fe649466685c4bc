"""The cross-model correlation table (the paper's Table 1) on fabricated `models` entries of the
shape `lsa eval` writes: every predictor × target pair with bootstrap intervals, the paper's
figures beside ours, and the fallbacks (overlap variant, training loss) named."""

from __future__ import annotations

import math

import pytest

from lsa_ds.eval.correlation import correlate, correlation_md
from lsa_ds.eval.report import render_markdown
from lsa_ds.eval.stats import pearson, spearman

# name: (SCE of last, perplexity at L = 64, at 128, at 256, passkey accuracy or None, final train loss)
MODELS = {"base": (7.4, 40.0, 95.0, 400.0, 0.25, 3.30), "a0": (7.0, 41.0, 80.0, 260.0, 0.50, 3.20),
          "a0.1": (6.6, 39.0, 62.0, 150.0, 0.75, 3.35), "a0.3": (6.2, 42.0, 55.0, 120.0, 1.00, 3.10),
          "a1": (6.9, 45.0, 70.0, 230.0, None, 3.40)}


def _model(name, sce, p64, p128, p256, passkey, loss, variant="last"):
    ppl = [{"length": n, "ppl": p, "ppl_ci": [p * 0.9, p * 1.1]} for n, p in ((64, p64), (128, p128), (256, p256))]
    stat = {"sce": {"mean": sce, "lo": sce - 0.1, "hi": sce + 0.1}, "skl": {"mean": sce - 6, "lo": 0, "hi": 9}}
    m = {"name": name, "kind": "run", "train_len": 64, "train_loss": loss, "heldout": "token cache",
         "perplexity": {"lengths": ppl, "score_tokens": 32, "windows": 4},
         "misalignment": {variant: {**stat, "seq_len": 64, "samples": 8}}}
    if passkey is not None:
        m["passkey"] = {"accuracy_overall": passkey}
    return m


def _models(**kw):
    return [_model(n, *v, **kw) for n, v in MODELS.items()]


def test_every_predictor_meets_every_long_target_with_bootstrap_intervals():
    corr = correlate(_models())
    table = corr["table"]
    assert table["misalignment_variant"] == "last" and table["loss_at_L"] == "held-out loss at L"
    assert table["targets"] == ["loss@2×L (128 tokens)", "loss@4×L (256 tokens)", "passkey accuracy"]
    pairs = {(p["predictor"], p["target"]): p for p in table["pairs"]}
    assert len(pairs) == 3 * 3
    sce = pairs[("misalignment SCE (last)", "loss@2×L (128 tokens)")]
    xs, ys = [v[0] for v in MODELS.values()], [math.log(v[2]) for v in MODELS.values()]
    assert sce["n"] == 5 and sce["pearson"] == pytest.approx(pearson(xs, ys)) and sce["spearman"] == pytest.approx(spearman(xs, ys))
    for key in ("pearson", "spearman"):
        ci = sce[f"{key}_ci"]
        assert -1 <= ci["lo"] <= ci["value"] <= ci["hi"] <= 1 and ci["n"] == 5 and 0 < ci["n_boot"] <= 2000
    assert sce["paper_abs_r"] == 0.85 and pairs[("held-out loss at L", "passkey accuracy")]["paper_abs_r"] == 0.62
    assert pairs[("misalignment SKL (last)", "passkey accuracy")]["n"] == 4  # a1 has no passkey
    loss = pairs[("held-out loss at L", "loss@4×L (256 tokens)")]
    assert sorted(p[0] for p in loss["points"]) == pytest.approx(sorted(math.log(v[1]) for v in MODELS.values()))
    # the first analysis (against perplexity at the longest length) is still there for its readers
    assert corr["length"] == 256 and [p["predictor"] for p in corr["predictors"]][-1] == "final training loss"


def test_the_markdown_puts_the_papers_figures_beside_ours():
    corr = correlate(_models())
    md = "\n".join(correlation_md(corr))
    assert "## Misalignment versus long-context quality (the paper's Table 1)" in md
    assert "| predictor | target | models | Pearson r [95%] | Spearman ρ [95%] | paper \\|r\\| | note |" in md
    sce = next(p for p in corr["table"]["pairs"] if p["predictor"] == "misalignment SCE (last)")
    ci = sce["pearson_ci"]
    assert f"| misalignment SCE (last) | loss@2×L (128 tokens) | 5 | {ci['value']:+.2f} [{ci['lo']:+.2f}, {ci['hi']:+.2f}]" in md
    assert "| 0.85 |" in md and "| 0.62 |" in md and "last-position variant" in md
    plain = [{k: v for k, v in m.items() if k != "passkey"} for m in _models()]  # no passkey grid to tabulate
    report = {"command": "lsa eval", "created": "now", "models": plain, "correlation": corr}
    assert md in render_markdown(report)


def test_fallbacks_are_named_and_too_few_models_is_one_line():
    models = _models(variant="overlap")
    for m in models:
        m["perplexity"]["lengths"] = m["perplexity"]["lengths"][1:]  # no perplexity at L = 64
    table = correlate(models)["table"]
    assert table["misalignment_variant"] == "overlap" and table["loss_at_L"] == "final training loss"
    assert {p["predictor"] for p in table["pairs"]} == {"misalignment SKL (overlap)", "misalignment SCE (overlap)",
                                                        "final training loss"}
    md = "\n".join(correlation_md(correlate(models)))
    assert "overlap variant" in md and "final training loss" in md
    short = correlate(models[:3])
    assert short == {"skipped": "needs at least 4 models (got 3)"}
    assert correlation_md(short)[2] == "Not computed: needs at least 4 models (got 3)."
    thin = _models()[:4]
    thin[0].pop("passkey")  # passkey in 3 models only: that pair is skipped, the rest computed
    pk = [p for p in correlate(thin)["table"]["pairs"] if p["target"] == "passkey accuracy"]
    assert all(p["n"] == 3 and "skipped" in p for p in pk)
