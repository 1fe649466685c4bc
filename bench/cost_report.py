"""Tables, fits and plots from bench_cost.py's and bench_peer.py's JSON (runs nothing).

    python bench/cost_report.py [--cost bench/out/cost.json ...] [--peer bench/out/peer.json] [--figures bench/figures]

Prints markdown: every point of the curves with the estimate's prediction beside the measurement;
per series the fits of step time (a·L + b·L², and a power law t ∝ L^k) and of the peak above base
(c + d·L, and its power law), each with its error (relative RMS of the residuals; the exponent's
standard error from the log-log least squares, none with two points); the growth with parameters at
each L the sizes share; the memory options' longest L; LoRA against full; the peer's pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from bench_cost import SIZES  # bench/bench_cost.py, beside this script


def lstsq(cols: list[np.ndarray], y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares y ~ sum(c_i * col_i); returns the coefficients and the relative RMS of the residuals."""
    A = np.stack(cols, 1)
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    return coef, float(np.sqrt(np.mean(((A @ coef - y) / y) ** 2)))


def power(x: np.ndarray, y: np.ndarray) -> str:
    """y ∝ x^k by least squares in log-log: 'k ± standard error' (no error from two points)."""
    lx, ly = np.log(x), np.log(y)
    (k, c), _ = lstsq([lx, np.ones_like(lx)], ly)
    if len(x) < 3:
        return f"{k:.2f}"
    res = ly - (k * lx + c)
    se = np.sqrt(res @ res / (len(x) - 2) / ((lx - lx.mean()) @ (lx - lx.mean())))
    return f"{k:.2f} ± {se:.2f}"


def curves(rows: list[dict]) -> None:
    ok = [r for r in rows if r["section"] == "curves" and r["status"] == "ok"]
    print("| size | params | align | L | step s | tokens/s | peak RSS MiB | above base MiB | predicted MiB "
          "| pred / meas | run |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in ok:
        print(f"| {r['size']} | {r['params'] / 1e6:.1f} M | {'on' if r['align'] else 'off'} | {r['seq_len']} | "
              f"{r['step_s']:.2f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | {r['above_base_mib']:.0f} | "
              f"{r['predicted_mib']:.0f} | {r['predicted_mib'] / r['above_base_mib']:.2f} | {r['run']} |")
    for r in rows:
        if r["section"] == "curves" and r["status"] != "ok":
            seen = f" (watchdog saw {r['watch_rss_mib']:.0f} MiB)" if "watch_rss_mib" in r else ""
            print(f"| {r['size']} | | {'on' if r['align'] else 'off'} | {r['seq_len']} | {r['status']}{seen} "
                  f"| | | | | | {r['run']} |")
    ratios = [r["predicted_mib"] / r["above_base_mib"] for r in rows if r["status"] == "ok"]
    print(f"\nestimate / measured over all {len(ratios)} measured points (options too): median "
          f"{statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}\n")
    print("| size | align | points (L) | step = a·L + b·L² (s, L in 1k) | error | step = t0 + a·L | error | "
          "step ∝ L^k | memory = c + d·L (MiB, L in 1k) | error | memory ∝ L^k |")
    print("|---|---|---|---|---:|---|---:|---|---|---:|---|")
    for size in dict.fromkeys(r["size"] for r in ok):
        for align in (False, True):
            s = [r for r in ok if r["size"] == size and r["align"] == align]
            if len(s) < 2:
                continue
            L = np.array([r["seq_len"] for r in s], float)
            t, m = np.array([r["step_s"] for r in s]), np.array([r["above_base_mib"] for r in s])
            k = L / 1024  # coefficients per 1k tokens; errors are the relative RMS of the residuals
            (a, b), et = lstsq([k, k**2], t)
            (t0, a1), e1 = lstsq([np.ones_like(k), k], t)
            (c, d), em = lstsq([np.ones_like(k), k], m)
            exact = " (2 points: exact)" if len(s) == 2 else ""
            print(f"| {size} | {'on' if align else 'off'} | {', '.join(str(int(x)) for x in L)} | "
                  f"a={a:.2f}, b={b:.3f} | {et:.1%} | t0={t0:.2f}, a={a1:.2f} | {e1:.1%}{exact} | {power(L, t)} | "
                  f"c={c:.0f}, d={d:.0f} | {em:.1%}{exact} | {power(L, m)} |")
    print("\n| align | L | sizes | step ∝ params^k | above base ∝ params^k |")
    print("|---|---:|---|---|---|")
    for align in (False, True):
        for L in sorted({r["seq_len"] for r in ok}):
            s = [r for r in ok if r["seq_len"] == L and r["align"] == align]
            if len(s) >= 2:
                P = np.array([r["params"] for r in s], float)
                print(f"| {'on' if align else 'off'} | {L} | {', '.join(r['size'] for r in s)} | "
                      f"{power(P, np.array([r['step_s'] for r in s]))} | "
                      f"{power(P, np.array([r['above_base_mib'] for r in s]))} |")


def options(rows: list[dict]) -> None:
    base = [r for r in rows if r["section"] == "curves" and r["align"]]
    size = next((r["size"] for r in rows if r["section"] not in ("curves",)), None)
    if size is None:
        return
    print(f"\nMemory options at {size}, alignment on: the longest L completed under the cap")
    print("\n| option | L: step s / peak RSS MiB / above base / predicted | longest L | stopped by |")
    print("|---|---|---:|---|")
    for name in ["plain ZeRO-3", *dict.fromkeys(r["section"] for r in rows if r["section"] != "curves")]:
        s = ([r for r in base if r["size"] == size] if name == "plain ZeRO-3"
             else [r for r in rows if r["section"] == name])
        done = [r for r in s if r["status"] == "ok"]
        pts = "; ".join(f"{r['seq_len']}: {r['step_s']:.1f} s / {r['peak_rss_mib']:.0f} / {r['above_base_mib']:.0f} / "
                        f"{r['predicted_mib']:.0f}" for r in done)
        stop = next((f"{r['status']} at {r['seq_len']}" for r in s if r["status"] != "ok"), "the grid's end")
        print(f"| {name} | {pts} | {max((r['seq_len'] for r in done), default='none')} | {stop} |")
    full = next((r for r in base if r["size"] == size and r["status"] == "ok"), None)
    lora = next((r for r in rows if r["section"] == "LoRA r 8" and r["status"] == "ok" and full
                 and r["seq_len"] == full["seq_len"]), None)
    if full and lora:
        print(f"\nLoRA r 8 against full at {size}, L {full['seq_len']}: peak per rank {lora['peak_rss_mib']:.0f} vs "
              f"{full['peak_rss_mib']:.0f} MiB ({lora['peak_rss_mib'] / full['peak_rss_mib']:.3f}); above base "
              f"{lora['above_base_mib']:.0f} vs {full['above_base_mib']:.0f} MiB; saved "
              f"{full['peak_rss_mib'] - lora['peak_rss_mib']:.0f} MiB. Gradients + optimizer states of full "
              f"fine-tuning (estimate): {full['grads_optim_mib']:.0f} MiB per rank = "
              f"{full['grads_optim_mib'] / full['above_base_mib']:.0%} of its peak above base, "
              f"{full['grads_optim_mib'] / full['peak_rss_mib']:.0%} of its peak RSS; "
              f"LoRA's: {lora['grads_optim_mib']:.1f} MiB; step {lora['step_s']:.1f} vs {full['step_s']:.1f} s; "
              f"trainable {lora['trainable_params']:,} vs {full['trainable_params']:,}")


def peer(rows: list[dict], cap_mib: float) -> None:
    print("\nPeer: pairs at one length (lsa first, then hf), step time of the last step, ratio pair by pair")
    print("\n| objective | pair | lsa s | hf s | lsa / hf | lsa peak MiB | hf peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in ("align", "plain"):
        pairs = sorted({r["pair"] for r in rows if r["phase"] == "pair"})
        ratios = []
        for i in pairs:
            a = next(r for r in rows if r["phase"] == "pair" and r["pair"] == i and r["variant"] == f"lsa-{kind}")
            b = next(r for r in rows if r["phase"] == "pair" and r["pair"] == i and r["variant"] == f"hf-{kind}")
            if a["status"] == b["status"] == "ok":
                ratios.append(a["step_s"] / b["step_s"])
                print(f"| {kind} | {i} | {a['step_s']:.2f} | {b['step_s']:.2f} | {ratios[-1]:.3f} | "
                      f"{a['peak_rss_mib']:.0f} | {b['peak_rss_mib']:.0f} |")
        if ratios:
            print(f"| {kind} | **median** | | | **{statistics.median(ratios):.3f}** ({min(ratios):.3f}-"
                  f"{max(ratios):.3f}) | | |")
    print(f"\n| variant | completed L (largest peak MiB) | longest L under {cap_mib:.0f} MiB | stopped by |")
    print("|---|---|---:|---|")
    for v in dict.fromkeys(r["variant"] for r in rows):
        s = [r for r in rows if r["variant"] == v]
        done = sorted({(r["seq_len"], round(r["peak_rss_mib"])) for r in s if r["status"] == "ok"})
        done = [(L, max(m for L2, m in done if L2 == L)) for L in dict.fromkeys(L for L, _ in done)]
        stop = next((f"{r['status']} at {r['seq_len']}" for r in s if r["status"] != "ok"), "budget")
        under = max((L for L, m in done if m <= cap_mib), default="none")
        print(f"| {v} | {', '.join(f'{L} ({m})' for L, m in done)} | {under} | {stop} |")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib  # deferred: only for the plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["section"] == "curves" and r["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=80)
    for n, size in enumerate(dict.fromkeys(r["size"] for r in ok)):  # one colour per size; dashed: alignment off
        for align, style in ((False, "--"), (True, "-")):
            s = [r for r in ok if r["size"] == size and r["align"] == align]
            if s:
                label = f"{size} align {'on' if align else 'off'}"
                axes[0].plot([r["seq_len"] for r in s], [r["step_s"] for r in s], style, marker="o", label=label,
                             color=f"C{n}")
                axes[1].plot([r["seq_len"] for r in s], [r["above_base_mib"] for r in s], style, marker="o",
                             label=label, color=f"C{n}")
    for ax, title in zip(axes, ("step time (s)", "peak above base (MiB/rank)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("L")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"\nplot: {out} ({out.stat().st_size // 1024} KiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cost", type=Path, nargs="*", default=[Path("bench/out/cost.json")])
    p.add_argument("--peer", type=Path, default=Path("bench/out/peer.json"))
    p.add_argument("--peer-cap-gib", type=float, default=2.5, help="the cap bench_peer.py's search ran under")
    p.add_argument("--figures", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    # a later file's point replaces an earlier one's at the same (section, size, alignment, L): a rerun wins
    points = {}
    for f in args.cost:
        for r in json.loads(f.read_text()) if f.is_file() else []:
            key = (r["section"], r["size"], r["align"], r["seq_len"])
            if r["status"] != "budget" or key not in points:  # "not started" never hides a measured point
                points[key] = {**r, "run": f.parent.name}
    rows = sorted(points.values(), key=lambda r: (r["section"] != "curves", list(SIZES).index(r["size"]),
                                                  r["align"], r["seq_len"]))
    if rows:
        curves(rows)
        options(rows)
        args.figures.mkdir(parents=True, exist_ok=True)
        plot(rows, args.figures / "cost.png")
    if args.peer.is_file():
        peer(json.loads(args.peer.read_text()), args.peer_cap_gib * 1024)


if __name__ == "__main__":
    main()
