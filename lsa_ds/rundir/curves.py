"""`runs/<name>/curves.png`: the training curves people otherwise redraw by hand from TensorBoard,
drawn by rank 0 at the end of training (and on a signal stop) from metrics.jsonl alone.

Also the one definition of a run's "final train loss": single steps are noisy (one batch each),
so reports quote the mean over the last tenth of the logged steps, and say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lsa_ds.rundir.metrics import length_keys, read_rows

FINAL_LOSS_FRACTION = 0.1
FINAL_LOSS_NOTE = "next-token CE, mean of the last 10% of logged steps"


def train_rows(rows: list[dict]) -> list[dict]:
    """Logged, finite optimizer steps (not evaluations, not skipped steps)."""
    return [r for r in rows if r.get("kind") != "eval" and not r.get("skipped") and isinstance(r.get("loss"), (int, float))]


def final_train_loss(rows: list[dict]) -> float | None:
    """Smoothed final training loss: the mean next-token CE over the last tenth of the logged steps
    (at least one). CE, not the objective: an alignment arm's loss adds alpha × divergence, and
    models are compared on what they all minimise (rows without `ce` give their `loss`)."""
    losses = [float(r["ce"] if isinstance(r.get("ce"), (int, float)) else r["loss"]) for r in train_rows(rows)]
    if not losses:
        return None
    n = max(1, round(len(losses) * FINAL_LOSS_FRACTION))
    return float(np.mean(losses[-n:]))


def _rolling(y: np.ndarray, k: int) -> np.ndarray:
    """Trailing mean over k points (fewer at the start), so the curve starts where the data does."""
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(0, idx - k)
    return (c[idx] - c[lo]) / (idx - lo)


def draw_curves(run_dir: Path) -> Path | None:
    """Write run_dir/curves.png from run_dir/metrics.jsonl; None when there is nothing to draw."""
    # deferred: matplotlib only when curves are drawn (rank 0, at the end)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the headless backend

    path = run_dir / "metrics.jsonl"
    rows = read_rows(path) if path.is_file() else []
    train = train_rows(rows)
    if not train:
        return None
    evals = [r for r in rows if r.get("kind") == "eval"]
    step = np.array([r["step"] for r in train])
    fig, (ax_loss, ax_eval, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.2))

    loss = np.array([r["loss"] for r in train], dtype=float)
    k = max(1, len(loss) // 20)
    ax_loss.plot(step, loss, color="C0", alpha=0.3, lw=0.8, label="loss (per step)")
    ax_loss.plot(step, _rolling(loss, k), color="C0", lw=1.8, label=f"loss (mean of {k} steps)")
    aligned = any(r.get("misalign") is not None for r in train)
    if aligned:  # the total differs from CE only when the regularizer is on
        ce = np.array([r.get("ce", np.nan) for r in train], dtype=float)
        ax_loss.plot(step, _rolling(ce, k), color="C1", lw=1.4, label="CE")
        mis = [(r["step"], r["misalign"]) for r in train if r.get("misalign") is not None]
        twin = ax_loss.twinx()
        twin.plot([s for s, _ in mis], _rolling(np.array([m for _, m in mis], dtype=float), k), color="C2", lw=1.4)
        twin.set_ylabel("misalignment (divergence per pair)", color="C2")
        twin.ticklabel_format(axis="y", useOffset=False)
        ax_loss.plot([], [], color="C2", label="misalignment (right axis)")
    ax_loss.set(xlabel="step", ylabel="training loss (nats)", title="training")
    ax_loss.legend(fontsize=8)

    lengths = sorted({n for r in evals for n in length_keys(r)})
    for i, n in enumerate(lengths):
        pts = [(r["step"], r[f"loss@{n}"]) for r in evals if f"loss@{n}" in r]
        ax_eval.plot([s for s, _ in pts], [v for _, v in pts], marker="o", color=f"C{i}", label=f"context {n}")
    ax_eval.set(xlabel="step", ylabel="held-out loss (nats)", title="held-out loss by context length")
    if lengths:
        ax_eval.legend(fontsize=8)
    else:
        ax_eval.text(0.5, 0.5, "no evaluation rows", ha="center", va="center", transform=ax_eval.transAxes)

    ax_lr.plot(step, [r.get("lr", np.nan) for r in train], color="C3")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    fig.suptitle(f"{run_dir.name}: final train loss {final_train_loss(rows):.4f} ({FINAL_LOSS_NOTE})", fontsize=10)
    fig.tight_layout()
    out = run_dir / "curves.png"
    tmp = run_dir / ".curves.png.tmp"
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(out)
    return out
