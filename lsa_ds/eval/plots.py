"""The report's PNGs (matplotlib, Agg backend): one function per figure, each reading the report
dict and returning the file it wrote, or None when there is nothing to draw."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path, rect=None) -> Path:
    fig.tight_layout(**({"rect": rect} if rect else {}))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


MARKERS = "os^Dv<>phX"
LINES = ("-", "--", "-.", ":")


def _dodge(i: int, n: int) -> float:
    """A factor that moves model i's points sideways on a log2 axis, so equal values stay visible."""
    return 2 ** (0.04 * (i - (n - 1) / 2))


def perplexity_plot(models: list[dict], path: Path, data: str | None = None) -> Path | None:
    """Perplexity versus context length, one line per model with 95% error bars; a dotted line
    marks each model's training length. Each model has its own marker and dash and is moved a
    little sideways, so a line lying on another stays visible."""
    rows = [m for m in models if m.get("perplexity")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(rows):
        pts = m["perplexity"]["lengths"]
        x = np.array([p["length"] for p in pts]) * _dodge(i, len(rows))
        y = np.array([p["ppl"] for p in pts])
        err = np.array([[p["ppl"] - p["ppl_ci"][0] for p in pts], [p["ppl_ci"][1] - p["ppl"] for p in pts]])
        color = f"C{i % 10}"
        ax.errorbar(x, y, yerr=err, marker=MARKERS[i % len(MARKERS)], linestyle=LINES[i % len(LINES)], capsize=3,
                    color=color, markerfacecolor="none", label=f"{m['name']} (L={m['train_len']})")
        ax.axvline(m["train_len"], color=color, linestyle=":", alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity (same final tokens)")
    ax.set_title("held-out perplexity versus context length" + (f"\n{data}" if data else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def difference_plot(paired: dict | None, path: Path, data: str | None = None) -> Path | None:
    """Each model's held-out loss minus the baseline's, window by window, versus context length
    (mean and 95% interval, nats per token, linear axis): differences of a few hundredths of a nat
    that a log-perplexity axis hides."""
    lines = []
    for m in (paired or {}).get("models", []):
        pts = sorted((int(r["metric"].removeprefix("loss@")), r["diff"]) for r in m["rows"]
                     if r["metric"].startswith("loss@"))
        if pts:
            lines.append((m["name"], pts))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.axhline(0, color="black", linewidth=1, label=f"{paired['baseline']} (baseline)")
    for i, (name, pts) in enumerate(lines):
        x = np.array([n for n, _ in pts]) * _dodge(i, len(lines))
        mean = np.array([d["mean"] for _, d in pts])
        err = np.array([[d["mean"] - d["lo"] for _, d in pts], [d["hi"] - d["mean"] for _, d in pts]])
        ax.errorbar(x, mean, yerr=err, marker=MARKERS[(i + 1) % len(MARKERS)], linestyle=LINES[(i + 1) % len(LINES)],
                    capsize=3, color=f"C{(i + 1) % 10}", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"loss − {paired['baseline']}'s (nats/token)")
    ax.set_title("held-out loss difference from the baseline, same windows (mean, 95% interval)"
                 + (f"\n{data}" if data else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def passkey_plot(models: list[dict], path: Path, key: str = "passkey",
                 title: str = "passkey retrieval accuracy") -> Path | None:
    """Passkey (or needle-in-a-haystack: key "niah") accuracy heatmaps (depth × length), one panel per model."""
    rows = [m for m in models if m.get(key)]
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows) + 1, 3.8), squeeze=False, layout="constrained")
    for i, (ax, m) in enumerate(zip(axes[0], rows)):
        pk = m[key]
        grid = np.array([[np.nan if a is None else a for a in row] for row in pk["accuracy"]], dtype=float).T
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", origin="lower")
        ax.set_xticks(range(len(pk["lengths"])), [str(n) for n in pk["lengths"]], rotation=45, fontsize=8)
        ax.set_yticks(range(len(pk["depths"])), [f"{d:g}" for d in pk["depths"]], fontsize=8)
        for (r, c), v in np.ndenumerate(grid):
            ax.text(c, r, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("prompt length (tokens)")
        if i == 0:
            ax.set_ylabel("needle depth")
        ax.set_title(f"{m['name']}", fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def misalignment_plot(models: list[dict], path: Path, data: str | None = None) -> Path | None:
    """Mean SCE and symmetric KL with 95% intervals per model; one row of panels per variant.
    Points, not bars: SCE sits near twice the entropy, and a bar from 0 would hide the differences."""
    rows = [m for m in models if m.get("misalignment")]
    variants = sorted({v for m in rows for v in m["misalignment"]}, key=["last", "overlap"].index)
    if not variants:
        return None
    fig, axes = plt.subplots(len(variants), 2, figsize=(8, 2.8 * len(variants) + 0.6), squeeze=False)
    names = [m["name"] for m in rows]
    for r, variant in enumerate(variants):
        for c, (key, label) in enumerate((("sce", "SCE"), ("skl", "symmetric KL"))):
            ax = axes[r][c]
            stats = [m["misalignment"].get(variant, {}).get(key) for m in rows]
            means = [s["mean"] if s else np.nan for s in stats]
            err = [[s["mean"] - s["lo"] if s else 0 for s in stats], [s["hi"] - s["mean"] if s else 0 for s in stats]]
            for i in range(len(rows)):
                ax.errorbar([i], [means[i]], yerr=[[err[0][i]], [err[1][i]]], fmt="o", capsize=5, color=f"C{i % 10}")
            ax.set_xticks(range(len(rows)), names, rotation=20, fontsize=8)
            ax.set_xlim(-0.5, len(rows) - 0.5)
            ax.set_title(f"{label}, {variant} position{'s' if variant == 'overlap' else ''}", fontsize=10)
            ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("long-short misalignment (mean, 95% interval)" + (f"\n{data}" if data else ""), fontsize=10)
    return _save(fig, path)


def copy_plot(models: list[dict], path: Path, data: str | None = None) -> Path | None:
    """Copy retrieval by source-to-copy distance, one line per model: token accuracy (left) and
    exact match (right) with 95% intervals; a dotted line at L0."""
    rows = [m for m in models if m.get("copy")]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, label in ((axes[0], "token_accuracy", "token accuracy"), (axes[1], None, "exact match")):
        for i, m in enumerate(rows):
            pts = [(b, b["token_accuracy"] if key else b) for b in m["copy"]["by_distance"] if b["n"]]
            pts = [(b, v) for b, v in pts if v]
            if not pts:
                continue
            # a bucket [from, to) sits at its geometric middle
            x = np.array([np.sqrt(max(1, b["from"]) * (b["to"] - 1)) for b, _ in pts]) * _dodge(i, len(rows))
            v = np.array([p.get("value", p.get("mean")) for _, p in pts])
            err = np.array([[vv - p["lo"] for vv, (_, p) in zip(v, pts)], [p["hi"] - vv for vv, (_, p) in zip(v, pts)]])
            ax.errorbar(x, v, yerr=err, marker=MARKERS[i % len(MARKERS)], linestyle=LINES[i % len(LINES)], capsize=3,
                        color=f"C{i % 10}", label=f"{m['name']} (L={m['train_len']})")
        ax.axvline(rows[0]["copy"]["l0"], color="grey", linestyle=":", label=f"L0 = {rows[0]['copy']['l0']}")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("distance from source to copy (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"copy retrieval at {rows[0]['copy']['context']} tokens of context (mean, 95% interval)"
                 + (f"\n{data}" if data else ""), fontsize=10)
    return _save(fig, path)


def correlation_plot(correlation: dict, path: Path, group_of=None) -> Path | None:
    """The correlation table as scatter plots: one row per predictor, one column per target whose
    values are not all equal; `group_of(name)` colours the points by group (a sweep's arms)."""
    pairs = [p for p in (correlation.get("table") or {}).get("pairs", []) if p.get("points")]
    if not pairs:
        return None
    preds, targets = list(dict.fromkeys(p["predictor"] for p in pairs)), list(dict.fromkeys(p["target"] for p in pairs))
    fig, axes = plt.subplots(len(preds), len(targets), figsize=(3.8 * len(targets), 3.2 * len(preds)), squeeze=False)
    groups = list(dict.fromkeys(group_of(n) for p in pairs for *_, n in p["points"])) if group_of else []
    for ax in axes.ravel():
        ax.set_visible(False)
    for p in pairs:
        ax = axes[preds.index(p["predictor"])][targets.index(p["target"])]
        ax.set_visible(True)
        xs, ys, names = zip(*p["points"])
        colours = [f"C{groups.index(group_of(n)) % 10}" for n in names] if group_of else "C0"
        ax.scatter(xs, ys, c=colours, s=18)
        if not group_of:
            for x, y, name in p["points"]:
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(p["predictor"], fontsize=8)
        ax.set_ylabel(p["target"], fontsize=8)
        ax.set_title(f"r {p['pearson']:+.2f}, ρ {p['spearman']:+.2f} (n {p['n']})", fontsize=9)
        ax.grid(True, alpha=0.3)
    if groups:
        handles = [plt.Line2D([], [], marker="o", ls="", color=f"C{i % 10}", label=g) for i, g in enumerate(groups)]
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(groups)), fontsize=7)
        return _save(fig, path, rect=(0, 0.04 + 0.025 * ((len(groups) - 1) // 4), 1, 1))
    return _save(fig, path)
