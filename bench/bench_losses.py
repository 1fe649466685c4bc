"""Loss benchmarks (lsa_ds/align/losses.py): chunked alignment losses vs a naive materialised baseline.

    python bench/bench_losses.py [--out bench/out] [--quick] [--threads 1]

1. Loss only. hidden [2, T, 256] = one sample's long row and short row (B = 1), a bias-free
   Linear(256 -> V=32000) as the output layer, overlap pairs with E = T/2 (T/2 pairs), CE on both
   rows, loss = ce_sum + 0.1 * div_sum (SCE), forward + backward, T in {2048, 8192}:
     naive        materialised [2, T, V] logits, F.cross_entropy + SCE through autograd
     closed       alignment_losses (chunk_tokens=1024): checkpointed chunks, closed-form backward
     closed_norec the same, but checkpoint's recompute also reruns the chunk math
     autograd     alignment_losses(impl="autograd"): checkpointed chunks, autograd through the math
   Peak memory: a fresh process per variant, VmHWM after the first forward + backward minus VmHWM
   before it (inputs built). Time: median CPU time after a warm-up run, the variants interleaved
   round by round in one process (machine load hits them alike; at T=8192 one process per variant,
   as the naive one alone peaks near 10 GiB), under glibc's default malloc and with MALLOC_CACHE
   (large buffers reused instead of page-faulted anew, as a GPU's caching allocator does).
2. Training step (forward + backward + AdamW) of a tiny LLaMA on the two views [A; S], B = 1,
   variants interleaved the same way:
     ce_only      chunked_ce over both rows (no pair math at all)
     alpha0       alignment_losses(with_divergence=False): CE + the forward-only logging sums
     alpha0.1     alignment_losses, SCE, alpha = 0.1 (closed form)   alpha0.1_autograd: impl="autograd"
     naive_alpha0 / naive_alpha0.1   HF logits materialised, F.cross_entropy (+ autograd SCE)
Children run single-threaded by default: on a shared machine CPU time is then a stable measure.
Results: printed ratios and <out>/losses.json (--quick: losses-quick.json).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

H, V, ALPHA, CHUNK = 256, 32000, 0.1, 1024
LOSS_VARIANTS = ("naive", "closed", "closed_norec", "autograd")
# A LLaMA small enough for CPU whose step is dominated by the V=32000 output layer: the worst case
# for loss overhead. The demo shape (hidden 192, vocab 4096: the cpu-h192 preset) is the second model.
MODELS = {
    "h256-v32000": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=4, vocab_size=32000, seq=1024),
    "demo-h192-v4096": dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=4, vocab_size=4096, seq=512),
}
STEP_VARIANTS = ("ce_only", "alpha0", "alpha0.1", "alpha0.1_autograd", "naive_alpha0", "naive_alpha0.1")


def vm_hwm_mib() -> float:
    """Peak RSS of this process (VmHWM: ru_maxrss would carry the parent's peak over fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def views(T: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One sample's [A; S] inputs with E = T/2 and overlap pairs, from lsa_ds.align.views."""
    import numpy as np

    from lsa_ds.align.views import make_views

    shifts = np.array([T // 2])
    windows = np.random.default_rng(seed).integers(0, vocab, (1, T + T // 2 + 1))
    return {k: torch.as_tensor(v) for k, v in make_views(windows, T, shifts).items()}


def naive_sce(logits: torch.Tensor, pair_mask: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Autograd SCE over materialised logits [2B, T, V]: what the chunked code replaces."""
    nb = logits.shape[0] // 2
    b, j = torch.nonzero(pair_mask, as_tuple=True)
    lp = logits[b, j + shifts[b]].float().log_softmax(-1)
    lq = logits[nb + b, j].float().log_softmax(-1)
    return -(lp.exp() * lq).sum() - (lq.exp() * lp).sum()


# ---------------------------------------------------------------------------- 1. loss only
@contextlib.contextmanager
def recompute_math(on: bool):
    """closed_norec: let checkpoint's recompute run the chunk math too (the flag never set)."""
    from lsa_ds.align import losses

    saved = losses._context_fn
    if not on:
        losses._context_fn = lambda: (contextlib.nullcontext(), contextlib.nullcontext())
    try:
        yield
    finally:
        losses._context_fn = saved


def loss_step(variant: str, hidden: torch.Tensor, v: dict, proj: torch.nn.Module) -> None:
    """One forward + backward of the loss-only problem."""
    from lsa_ds.align.losses import alignment_losses

    if variant == "naive":
        logits = proj(hidden).float()
        ce = F.cross_entropy(logits.reshape(-1, V), v["labels"].reshape(-1), reduction="sum")
        (ce + ALPHA * naive_sce(logits, v["pair_mask"], v["shifts"])).backward()
        return
    with recompute_math(variant != "closed_norec"):
        out = alignment_losses(hidden, v["labels"], proj, v["pair_mask"], v["shifts"], chunk_tokens=CHUNK,
                               impl="autograd" if variant == "autograd" else "closed")
        (out["ce_sum"] + ALPHA * out["div_sum"]).backward()


def loss_inputs(T: int):
    torch.manual_seed(0)
    return torch.randn(2, T, H, requires_grad=True), views(T, V), torch.nn.Linear(H, V, bias=False)


def child_memory(variant: str, T: int) -> dict:
    """Peak RSS growth over one forward + backward, inputs already built (fresh process per variant)."""
    hidden, v, proj = loss_inputs(T)
    before = vm_hwm_mib()
    t0 = time.perf_counter()
    loss_step(variant, hidden, v, proj)
    return {"variant": variant, "T": T, "peak_mib": vm_hwm_mib() - before, "first_wall_s": time.perf_counter() - t0}


def timed_rounds(variants, run, rounds: int) -> dict:
    """Variants interleaved round by round after one warm-up each, so machine load hits them alike.
    CPU time of this (single-threaded) process is the figure; wall time is kept alongside."""
    for var in variants:
        run(var)
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for var in variants:
            c0, w0 = time.process_time(), time.perf_counter()
            run(var)
            cpu[var].append(time.process_time() - c0)
            wall[var].append(time.perf_counter() - w0)
    return {"cpu_s": cpu, "wall_s": wall, "cpu_median_s": {k: statistics.median(x) for k, x in cpu.items()},
            "wall_median_s": {k: statistics.median(x) for k, x in wall.items()}}


def child_time(T: int, rounds: int, variants: list[str]) -> dict:
    hidden, v, proj = loss_inputs(T)

    def run(var: str) -> None:
        hidden.grad = proj.weight.grad = None
        loss_step(var, hidden, v, proj)

    return {"T": T, **timed_rounds(variants, run, rounds)}


def run_child(kind: str, *args, env: dict | None = None) -> dict:
    """One measurement in a fresh interpreter; its result is the last stdout line (or the failure)."""
    cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()), "--child", json.dumps([kind, *args])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode:  # e.g. -9: the naive variant at large T killed for memory on a shared box
        print(f"child {kind} {args} failed (rc {proc.returncode}): {proc.stderr[-500:]}", flush=True)
        return {"failed": proc.returncode, "stderr": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loss_times(T: int, rounds: int, env: dict | None) -> dict:
    """Median CPU seconds per variant: interleaved in one process, or at large T one process per
    variant (the naive one alone peaks near 10 GiB; several in one process risk the OOM killer)."""
    if T <= 4096:
        r = run_child("time", T, rounds, list(LOSS_VARIANTS), env=env)
        return {} if "failed" in r else r["cpu_median_s"]
    return {var: r["cpu_median_s"][var] for var in LOSS_VARIANTS
            if "failed" not in (r := run_child("time", T, rounds, [var], env=env))}


# ---------------------------------------------------------------------------- 2. training step
def child_step(name: str, rounds: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lsa_ds.align.losses import alignment_losses, chunked_ce

    spec = dict(MODELS[name])
    seq = spec.pop("seq")
    torch.manual_seed(0)
    cfg = LlamaConfig(**spec, max_position_embeddings=seq, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    lm = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-5)
    v = views(seq, cfg.vocab_size)
    ids, pos, labels = v["input_ids"], v["position_ids"], v["labels"]

    def step(variant: str) -> None:
        opt.zero_grad(set_to_none=True)
        if variant.startswith("naive"):
            logits = lm(input_ids=ids, position_ids=pos, use_cache=False).logits
            ce = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), labels.reshape(-1), reduction="sum")
            loss = ce / labels.numel()
            if variant == "naive_alpha0.1":
                loss = loss + ALPHA * naive_sce(logits, v["pair_mask"], v["shifts"]) / v["pair_mask"].sum()
        else:
            hidden = lm.model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
            proj = lm.get_output_embeddings()
            if variant == "ce_only":
                loss = chunked_ce(hidden, labels, proj, CHUNK)[0] / labels.numel()
            else:
                out = alignment_losses(hidden, labels, proj, v["pair_mask"], v["shifts"], chunk_tokens=CHUNK,
                                       with_divergence=variant != "alpha0",
                                       impl="autograd" if variant.endswith("autograd") else "closed")
                loss = out["ce_sum"] / out["ce_count"]
                if variant != "alpha0":
                    loss = loss + ALPHA * out["div_sum"] / out["pair_count"]
        loss.backward()
        opt.step()

    r = timed_rounds(STEP_VARIANTS, step, rounds)
    pairs = [("alpha0.1", "alpha0"), ("alpha0.1", "ce_only"), ("alpha0", "ce_only"), ("alpha0.1_autograd", "alpha0"),
             ("naive_alpha0.1", "naive_alpha0"), ("alpha0.1", "naive_alpha0.1")]
    # median over rounds of the within-round ratio: both steps of a pair ran seconds apart, so slow
    # drifts in machine load cancel (the ratio of medians is kept alongside)
    cpu, med = r["cpu_s"], r["cpu_median_s"]
    return {"model": name, "config": MODELS[name], "rows": [2, seq], **r,
            "ratios": {f"{x} / {y}": statistics.median(u / v for u, v in zip(cpu[x], cpu[y])) for x, y in pairs},
            "ratios_of_medians": {f"{x} / {y}": med[x] / med[y] for x, y in pairs}}


# ---------------------------------------------------------------------------- driver
CHILDREN = {"memory": child_memory, "time": child_time, "step": child_step}
# glibc serves allocations over its mmap threshold (at most 32 MiB) with fresh pages: every large
# buffer is page-faulted anew. This env keeps them in the heap and reuses them, as a GPU's caching
# allocator does; the loss timings are taken under both.
MALLOC_CACHE = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 35)}


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "loadavg_start": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/out")
    p.add_argument("--quick", action="store_true", help="T=2048 only, fewer rounds")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per child (1: CPU time is a steady measure on a shared machine)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.child:
        kind, *args = json.loads(a.child)
        print(json.dumps(CHILDREN[kind](*args)))
        return
    result: dict = {"command": " ".join(["python", *sys.argv]),
                    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "machine": {**machine(), "torch_threads": a.threads}, "loss": [], "step": []}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("losses-quick.json" if a.quick else "losses.json")
    for T, rounds in ([(2048, 3)] if a.quick else [(2048, 5), (8192, 1)]):
        mem = {var: run_child("memory", var, T) for var in LOSS_VARIANTS}
        row: dict = {"T": T, "peak_mib": {k: m.get("peak_mib") for k, m in mem.items()}}
        for label, env in (("glibc", None), ("malloc_cache", MALLOC_CACHE)):
            row[f"cpu_s_{label}"] = loss_times(T, rounds, env)
        result["loss"].append(row)
        path.write_text(json.dumps(result, indent=1))  # partial results survive a later failure
        for var in LOSS_VARIANTS:
            pk, base = row["peak_mib"][var], row["peak_mib"]["naive"]
            line = f"loss T={T:5d} {var:13s} peak {pk or 0:7.0f} MiB ({(pk or 0) / (base or 1):.3f}x naive)"
            for label in ("glibc", "malloc_cache"):
                t = row[f"cpu_s_{label}"]
                if var in t and "naive" in t:
                    line += f"  {label} {t[var]:6.2f} s ({t[var] / t['naive']:.2f}x)"
            print(line, flush=True)
    for name in MODELS:
        s = run_child("step", name, 3 if a.quick else 11)
        result["step"].append(s)
        if "failed" in s:
            continue
        print(f"step {name}: " + "  ".join(f"{k} {t:.3f}s" for k, t in s["cpu_median_s"].items()), flush=True)
        for k, r in s["ratios"].items():
            print(f"    {k:32s} {r:.3f}", flush=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
