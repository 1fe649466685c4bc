"""Summarise a study: per-bucket MSE tables (Markdown + rich), reparameterisation ratios, the PNG.

Spread is over seeds: a cell is mean ± sample std (ddof=1) across seeds of that seed's mean MSE
over the bucket's lengths; the plot shades min–max across seeds (a std band would cross zero on a
log axis). Baselines are exact expectations, not measurements.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from lsa_ds.cli_help import console as cli_console
from lsa_ds.synthetic import tasks as task_defs
from lsa_ds.synthetic.train import RunResult, StudySettings


@dataclass(frozen=True)
class Cell:
    """Mean and spread over seeds of one number."""

    mean: float
    std: float
    seeds: int

    def text(self) -> str:
        return f"{self.mean:.3g}" if self.seeds < 2 else f"{self.mean:.3g} ± {self.std:.2g}"


@dataclass(frozen=True)
class Row:
    """One line of the table: a (task, pe) over seeds, or an exact baseline (pe == "—")."""

    task: str
    pe: str
    buckets: list[Cell]
    at_max_len: Cell
    """MSE at the longest test length alone."""


def _cell(values: list[float]) -> Cell:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Cell(statistics.fmean(values), std, len(values))


def summarise(results: list[RunResult], settings: StudySettings) -> list[Row]:
    """Rows for every (task, pe) in `results` (first-seen order), then one baseline row per task family."""
    buckets = task_defs.length_buckets(settings.test_max_len)
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.task, result.pe), []).append(result)
    rows = []
    for (task, pe), runs in groups.items():
        per_bucket = [
            _cell([statistics.fmean(run.mse_by_length[lo - 1 : hi]) for run in runs]) for lo, hi in buckets
        ]
        rows.append(Row(task, pe, per_bucket, _cell([run.mse_by_length[-1] for run in runs])))
    families = dict.fromkeys("mean" if task == "mean" else "length" for task, _ in groups)
    for family in families:
        label, mse_at = task_defs.constant_baseline(family, settings.train_max_len)
        exact = [Cell(statistics.fmean(mse_at(n) for n in range(lo, hi + 1)), 0.0, 1) for lo, hi in buckets]
        rows.append(Row(f"{family}: {label}", "—", exact, Cell(mse_at(settings.test_max_len), 0.0, 1)))
    return rows


@dataclass(frozen=True)
class RatioRow:
    """How much a reparameterisation cuts plain length prediction's error (> 1: it helps)."""

    task: str
    pe: str
    formula: str
    ratio_at_max_len: float
    """Seed-mean MSE of `length` / seed-mean MSE of this task, at the longest test length."""
    ratio_last_bucket: float
    """The same over the last length bucket (e.g. 41-50)."""


def reparam_ratios(rows: list[Row]) -> list[RatioRow]:
    plain = {row.pe: row for row in rows if row.task == "length"}
    ratios = []
    for row in rows:
        reparam = task_defs.REPARAMS.get(row.task.removeprefix("length-")) if row.task.startswith("length-") else None
        if reparam is None or row.pe not in plain:
            continue
        base = plain[row.pe]
        ratios.append(
            RatioRow(
                row.task,
                row.pe,
                reparam.formula,
                base.at_max_len.mean / row.at_max_len.mean,
                base.buckets[-1].mean / row.buckets[-1].mean,
            )
        )
    return ratios


def _headers(settings: StudySettings) -> list[str]:
    labels = [task_defs.bucket_label(b) for b in task_defs.length_buckets(settings.test_max_len)]
    return ["task", "pe", *labels, f"n={settings.test_max_len}"]


def markdown_table(rows: list[Row], ratios: list[RatioRow], settings: StudySettings, seeds: int) -> str:
    headers = _headers(settings)
    lines = [
        f"Test MSE by length bucket (mean ± std over {seeds} seed(s) of each seed's bucket-mean MSE); "
        f"trained on lengths {settings.train_min_len}-{settings.train_max_len}. "
        "Length tasks are scored in length units after inverting f.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        cells = [row.task, row.pe, *(c.text() for c in row.buckets), row.at_max_len.text()]
        lines.append("| " + " | ".join(cells) + " |")
    if ratios:
        last = task_defs.bucket_label(task_defs.length_buckets(settings.test_max_len)[-1])
        lines += [
            "",
            "Error reduction of each reparameterisation vs plain `length` (ratio of seed-mean MSEs; > 1 helps):",
            "",
            f"| task | pe | f | ratio at n={settings.test_max_len} | ratio over {last} |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.task} | {r.pe} | {r.formula} | {r.ratio_at_max_len:.3g}× | {r.ratio_last_bucket:.3g}× |"
            for r in ratios
        ]
    return "\n".join(lines) + "\n"


def print_rich(rows: list[Row], ratios: list[RatioRow], settings: StudySettings) -> None:
    table = Table(title="synthetic study: test MSE by length (mean ± std over seeds)")
    for header in _headers(settings):
        table.add_column(header, justify="left" if header in ("task", "pe") else "right")
    for row in rows:
        style = "dim" if row.pe == "—" else None
        table.add_row(row.task, row.pe, *(c.text() for c in row.buckets), row.at_max_len.text(), style=style)
    # Off a terminal rich assumes 80 columns and wraps every cell; a log file can take the full row.
    console = cli_console()
    console.print(table)
    for r in ratios:
        n = settings.test_max_len
        console.print(f"{r.task} ({r.pe}): error at n={n} is plain length's ÷ {r.ratio_at_max_len:.3g}")


def _positive_or_nan(x: float) -> float:
    return x if x > 0 else math.nan


def plot(results: list[RunResult], settings: StudySettings, path: Path) -> None:
    """mse_vs_length.png: one panel per positional encoding, one line per task, log y."""
    # deferred: matplotlib only when the plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the headless backend

    pes = list(dict.fromkeys(r.pe for r in results))
    task_names = list(dict.fromkeys(r.task for r in results))
    lengths = list(range(1, settings.test_max_len + 1))
    fig, axes = plt.subplots(1, len(pes), figsize=(5.5 * len(pes) + 2.5, 4.6), sharey=True, squeeze=False)
    colors = {task: f"C{i}" for i, task in enumerate(task_defs.TASKS)}
    for ax, pe in zip(axes[0], pes):
        ax.axvspan(settings.train_min_len - 0.5, settings.train_max_len + 0.5, color="0.92", label="train lengths")
        for task in task_names:
            curves = [r.mse_by_length for r in results if r.pe == pe and r.task == task]
            if not curves:
                continue
            by_length = list(zip(*curves))
            # An exact 0 (e.g. a clamped 1/sqrt output decoding to exactly n = 1) cannot sit on a
            # log axis: leave a gap rather than invent a value.
            mean = [_positive_or_nan(statistics.fmean(v)) for v in by_length]
            ax.plot(lengths, mean, color=colors[task], label=f"{task} ({len(curves)} seeds)")
            if len(curves) > 1:
                low = [_positive_or_nan(min(v)) for v in by_length]
                high = [_positive_or_nan(max(v)) for v in by_length]
                ax.fill_between(lengths, low, high, color=colors[task], alpha=0.2)
        for family in dict.fromkeys("mean" if t == "mean" else "length" for t in task_names):
            label, mse_at = task_defs.constant_baseline(family, settings.train_max_len)
            # "predict the longest training length" is a reference for extrapolation only.
            shown = lengths if family == "mean" else [n for n in lengths if n > settings.train_max_len]
            style = "--" if family == "mean" else ":"
            ax.plot(shown, [mse_at(n) for n in shown], color="0.4", linestyle=style, label=f"{family}: {label}")
        ax.set_yscale("log")
        ax.set_title(f"positional encoding: {pe}")
        ax.set_xlabel("test length n")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("test MSE (task units; shaded: min–max over seeds)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: curves span the axes
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
