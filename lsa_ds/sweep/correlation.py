"""The paper's Table 1 over a sweep's runs: every finished run that `lsa eval` has scored is one
model, and `eval.correlation.correlate` relates its misalignment (SKL and SCE, last position) and its
held-out loss at L to its long-context quality (loss at 2× and 4× L, passkey) — Pearson and
Spearman with bootstrap intervals (resampling whole arms when the sweep has seeds), beside the
paper's |r|. The sweep's runs were all scored on the
same windows by the same `lsa eval` arguments, so their numbers are comparable across arms.
"""

from __future__ import annotations

from pathlib import Path

from lsa_ds.eval import plots
from lsa_ds.eval.correlation import correlate, correlation_md


def sweep_models(rows: list[dict]) -> list[dict]:
    """The `lsa eval` model entries of the finished runs, named by run."""
    return [{**r["eval"]["model"], "name": r["run"]} for r in rows
            if r["status"] == "finished" and r["eval"] and r["eval"].get("model")]


def correlation_section(rows: list[dict], arm_of: dict[str, str] | None, folder: Path,
                        n_boot: int = 2000) -> tuple[dict, list[str], list[str]]:
    """(correlation dict, Markdown lines, files written) for the sweep report; nothing when no run
    has been evaluated. `arm_of` maps a run to its arm (a sweep with seeds): the bootstrap then
    resamples whole arms, and the plot colours the points by arm."""

    models = sweep_models(rows)
    if not models:
        return {}, [], []
    corr = correlate(models, n_boot=n_boot, groups=arm_of)
    lines = correlation_md(corr)
    if lines:
        lines[0] = lines[0].replace("## ", f"## Across the sweep's {len(models)} evaluated runs: ")
    files = []
    if "table" in corr and plots.correlation_plot(corr, folder / "report-correlation.png",
                                                  group_of=(lambda n: arm_of.get(n, n)) if arm_of else None):
        files.append("report-correlation.png")
        lines += ["![correlation](report-correlation.png)", ""]
    return corr, lines, files
