"""The paper's Table 1 over the study's runs whose loss has no SCE term (baseline, baseline YaRN,
alpha 0, SKL 0.1) — models not trained to lower the metric, as the paper's were not. Reads the
runs' `lsa eval` reports; prints the rows of docs/study/report.md's subset table.

    .venv/bin/python docs/study/subset_correlation.py
"""

from lsa_ds.eval.correlation import correlate
from lsa_ds.sweep.arms import arm_of_point
from lsa_ds.sweep.correlation import sweep_models
from lsa_ds.sweep.report import gather
from lsa_ds.sweep.spec import load_sweep

sweep = load_sweep("recipes/ablations/cpu-study.yaml")
rows = [gather(p) for p in sweep.points]
kept = [(r, p) for r, p in zip(rows, sweep.points)
        if not p.recipe.align.enabled or p.recipe.align.alpha == 0 or p.recipe.align.divergence != "sce"]
keep = [r for r, _ in kept]
arm = {r["run"]: arm_of_point(sweep, p)[0] for r, p in kept}  # resample arms whole, as the sweep report does
corr = correlate(sweep_models(keep), n_boot=2000, groups=arm)
print(f"{len(sweep_models(keep))} evaluated runs in {len(set(arm.values()))} arms")
for p in corr["table"]["pairs"]:
    if "pearson_ci" in p:
        r, rho = p["pearson_ci"], p["spearman_ci"]
        print(f"| {p['predictor']} | {p['target']} | {p['n']} | {r['value']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}] "
              f"| {rho['value']:+.2f} [{rho['lo']:+.2f}, {rho['hi']:+.2f}] |")
    else:
        print(f"| {p['predictor']} | {p['target']} | {p['n']} | – | – | {p['skipped']}")
