"""Cost curves: step time and memory against window length and model size, 2 CPU ranks, ZeRO-3.

    nice -n 5 python bench/bench_cost.py [--sizes 20M,60M,100M] [--budget-min 28] [--cap-gib 4.5]
    nice -n 19 python bench/bench_cost.py --quick          # a tiny model, L 128-256: seconds per point
    python bench/bench_cost.py --report bench/out/cost.json  # tables, fits and plots again, run nothing

Every point is its own 2-rank DeepSpeed launch (fp32, gloo, 1 thread per rank) of a LLaMA built
from its config (vocab 32000), under a per-rank resident-set cap (bench/capped.py: a point that
passes it is killed and counts as "does not fit"). Each rank imports torch, DeepSpeed and
transformers, joins the process group and reads its resident set (the runtime's base), builds the
model and the engine, and runs `--steps` steps of `Engine.train_step` (what `lsa train` calls per
step) on random windows, micro-batch 1. Per point: the last step's wall time (the first pays for
ZeRO-3's tracing), tokens/s (training-text tokens of both ranks, L each, per second: with
alignment the forward runs 2L rows per window), the larger rank's peak resident set and peak above
its base, and `lsa_ds.model.estimate`'s prediction of that peak (target cpu; device + host, both
resident on a CPU rank). Sections:

- curves: every size, alignment off and on, L doubling from `--l0` until a point does not fit or
  the next one would not finish within the section's budget;
- options: at the largest size, alignment on, each memory option alone (activation checkpointing,
  TiledMLP, activation offload, ZeRO offload, SP=2, LoRA r 8), L doubling from `--l0`: the longest
  L each completes under the cap;
- LoRA r 8 against full fine-tuning at the largest size and `--l0` (from the two sections' points);
- profile (only when named in `--sections`): at the largest size and `--l0`, alignment off and on,
  torch.profiler over rank 0's last step; its ops' self CPU time grouped into matmuls, attention,
  softmax / log-softmax (the losses' and attention's), ZeRO-3's communication, the optimizer and
  the rest (`PROFILE_GROUPS`): where the step's time goes.

bench/cost_report.py fits and prints the tables (a·L + b·L², log-log exponents) and draws the plots.
Not a test: it only measures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from capped import run_capped  # bench/capped.py, beside this script
from ranks import engine_inputs, status_mib

from lsa_ds.train.distributed import exit_rank

VOCAB = 32000
SIZES = {  # name: LLaMA shape (heads of 64 dims, MLP ~2.7x hidden); parameter counts in the report
    "quick": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=2, tie=True),
    "20M": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, tie=True),
    "60M": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, tie=False),
    "100M": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12, tie=False),
}
OPTIONS = {  # memory option: recipe overrides (each alone, on top of the plain ZeRO-3 recipe)
    "activation checkpointing": ["model.activation_checkpointing=true"],
    "TiledMLP": ["model.tiled_mlp=true"],
    "activation offload": ["model.activation_checkpointing=true", "model.activation_offload=true"],
    "ZeRO offload": ["train.ds_config=zero3_offload", "optim.impl=deepspeed"],
    "SP=2": ["train.sequence_parallel=2"],
    "LoRA r 8": ["model.lora.r=8", "model.lora.alpha=16"],
    # a time option, the other way round: one chunk holds all [2B, L, V] logits, none is recomputed in backward
    "one loss chunk": ["align.chunk_tokens=1048576"],
}
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""As in bench_memory_estimate.py: freed tensors leave the resident set (glibc's adaptive threshold would keep
them, bench/README.md "Memory estimate"), so the peak above base is comparable with the estimate."""


def overrides(size: str, L: int, align: bool, extra: list[str], steps: int) -> list[str]:
    shape = dict(SIZES[size])
    tie = shape.pop("tie")
    shape |= {"num_key_value_heads": shape["num_attention_heads"], "tie_word_embeddings": tie,
              "max_position_embeddings": L}
    return ["model.preset=tiny", "model.overrides=" + json.dumps(shape), f"data.tokenizer.vocab_size={VOCAB}",
            f"train.seq_len={L}", "train.micro_batch_size=1", f"train.max_steps={steps}",
            f"align.enabled={str(align).lower()}", *extra]


PROFILE_GROUPS = (  # (group, substrings of an op's name), first match wins; the rest is "other"
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("softmax / log-softmax", ("softmax", "logsumexp")),
    ("communication", ("all_gather", "reduce_scatter", "all_reduce", "broadcast", "gloo", "c10d", "record_param_comms",
                       "allgather", "reducescatter", "allreduce")),
    ("optimizer", ("adam", "_foreach_")),
    ("copies and casts", ("aten::copy_", "aten::to", "aten::cat", "aten::contiguous", "aten::clone", "aten::index",
                          "aten::fill_", "aten::zero_", "aten::empty", "aten::narrow", "aten::split")),
)


def profile_groups(prof) -> dict:
    """Self CPU time of a torch.profiler run by PROFILE_GROUPS, in seconds, and the 12 costliest ops."""
    ops = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
    groups: dict[str, float] = {}
    for name, sec in ops:
        group = next((g for g, keys in PROFILE_GROUPS if any(k in name.lower() for k in keys)), "other")
        groups[group] = groups.get(group, 0.0) + sec
    top = sorted(ops, key=lambda o: -o[1])[:12]
    mm = sorted(((str(e.input_shapes), e.count, e.self_cpu_time_total / 1e6) for e in
                 prof.key_averages(group_by_input_shape=True) if e.key == "aten::mm"), key=lambda m: -m[2])
    return {"groups": groups, "total_s": sum(groups.values()), "top": top, "mm_by_shape": mm[:16]}


def rank_main(args) -> None:
    import deepspeed  # noqa: F401 (part of the runtime's base)
    import torch
    import torch.distributed as dist

    from lsa_ds.model.build import build_model, count_params
    from lsa_ds.train.engine import Engine

    rank, world, recipe, ds_config, hf_config, views = engine_inputs(args.overrides, args.steps)
    L, sp = recipe.train.seq_len, recipe.train.sequence_parallel
    dist.barrier()
    base = status_mib("VmRSS")
    lm = build_model(recipe, hf_config, ds_config)
    engine = Engine(recipe, ds_config, lm, args.steps)
    times, profiled = [], None
    for i in range(args.steps):
        watch = args.profile and i == args.steps - 1  # the timed step, profiled (the profiler slows it a little)
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) if watch else None
        dist.barrier()
        t0 = time.perf_counter()
        if prof:
            prof.start()
        engine.train_step([views[i]])
        if prof:
            prof.stop()
            profiled = profile_groups(prof)
        dist.barrier()  # a step lasts until the slower rank is done
        times.append(time.perf_counter() - t0)
    peak = torch.tensor([status_mib("VmHWM") - base, status_mib("VmHWM"), base])
    every = [torch.zeros_like(peak) for _ in range(world)]
    dist.all_gather(every, peak)
    if rank == 0:
        Path(args.result).write_text(json.dumps({
            "step_s": times[-1], "all_step_s": times, "tokens_per_s": (world // sp) * L / times[-1],
            "above_base_mib": max(float(p[0]) for p in every), "peak_rss_mib": max(float(p[1]) for p in every),
            "base_mib": [float(p[2]) for p in every], "trainable_params": count_params(lm, trainable=True),
            "profile": profiled}))


def predict(over: list[str], world: int = 2) -> dict:
    """The dry run's estimate for these overrides on CPU ranks (this process imports no DeepSpeed)."""
    from lsa_ds.model.config import build_hf_config
    from lsa_ds.model.estimate import estimate_memory
    from lsa_ds.recipe import load_recipe
    from lsa_ds.recipe.ds_config import resolve_ds_config

    recipe = load_recipe(None, over)
    est = estimate_memory(recipe, build_hf_config(recipe, VOCAB, 1, 2, None), resolve_ds_config(recipe, world),
                          world, target="cpu").to_dict()
    items = {i["name"]: i["bytes"] / 2**20 for i in est["items"]}
    return {"predicted_mib": (est["device_bytes"] + est["host_bytes"]) / 2**20, "params": est["params"]["total"],
            "trainable": est["params"]["trainable"], "grads_optim_mib": sum(
                v for k, v in items.items() if k.split(": ")[-1] in ("gradients", "fp32 master weights", "Adam moments",
                                                                      "16-bit gradients"))}


class Budget:
    """Wall-clock budget of a section: a point starts only when its predicted wall time fits."""

    GROWTH = 2.4  # a doubling of L costs ~2x (linear terms) to ~4x (attention's L^2); launch time stays

    def __init__(self, minutes: float):
        self.end = time.monotonic() + 60 * minutes

    def left(self) -> float:
        return self.end - time.monotonic()

    def fits(self, last_wall: float | None) -> bool:
        return self.left() > (self.GROWTH * last_wall if last_wall else 60.0)


def series(tag: str, size: str, align: bool, extra: list[str], args, budget: Budget, rows: list) -> None:
    """One row per L, doubling from args.l0 until a point does not fit, fails or the budget ends."""
    L, last = args.l0, None
    while L <= args.l_max:
        if not budget.fits(last):
            rows.append({"section": tag, "size": size, "align": align, "seq_len": L, "status": "budget"})
            (args.out / f"cost{'-quick' if args.quick else ''}.json").write_text(json.dumps(rows, indent=1))
            print(f"  {tag:26s} {size:5s} align {'on ' if align else 'off'} L {L:6d}  not started: the section's "
                  f"budget ({budget.left():.0f} s left) would not hold it", flush=True)
            return
        over = overrides(size, L, align, extra, args.steps)
        nproc = 2
        timeout = min(args.section_end - time.monotonic(), args.point_timeout)
        res = run_capped(__file__, nproc, ["--steps", str(args.steps), "--overrides", json.dumps(over)],
                         args.out / "cost-point.json", args.cap_gib * 1024, timeout, MALLOC)
        res |= {"section": tag, "size": size, "align": align, "seq_len": L, "overrides": over, **predict(over)}
        rows.append(res)
        (args.out / f"cost{'-quick' if args.quick else ''}.json").write_text(json.dumps(rows, indent=1))
        if res["status"] != "ok":
            print(f"  {tag:26s} {size:5s} align {'on ' if align else 'off'} L {L:6d}  {res['status']} after "
                  f"{res['wall_s']:.0f} s (watchdog saw {res['watch_rss_mib']:.0f} MiB) {res.get('log_tail', '')}",
                  flush=True)
            return
        print(f"  {tag:26s} {size:5s} align {'on ' if align else 'off'} L {L:6d}  step {res['step_s']:7.2f} s  "
              f"{res['tokens_per_s']:7.0f} tok/s  peak {res['peak_rss_mib']:6.0f} MiB  above base "
              f"{res['above_base_mib']:6.0f}  predicted {res['predicted_mib']:6.0f} "
              f"({res['predicted_mib'] / res['above_base_mib']:.2f})  launch {res['wall_s']:.0f} s", flush=True)
        last, L = res["wall_s"], 2 * L


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="20M,60M,100M", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--l0", type=int, default=1024, help="first window length of every series")
    p.add_argument("--l-max", type=int, default=65536)
    p.add_argument("--steps", type=int, default=2, help="steps per point (the last one is timed)")
    p.add_argument("--cap-gib", type=float, default=4.5, help="per-rank resident-set cap")
    p.add_argument("--budget-min", type=float, default=28, help="wall budget of the curves section, minutes")
    p.add_argument("--options-min", type=float, default=10, help="wall budget of the options section, minutes")
    p.add_argument("--options-size", help="model size of the options section (default: the largest)")
    p.add_argument("--options-cap-gib", type=float, help="per-rank cap of the options section (default: --cap-gib)")
    p.add_argument("--options", help="comma-separated names of OPTIONS to run (default: all)")
    p.add_argument("--point-timeout", type=float, default=420, help="seconds one launch may take")
    p.add_argument("--sections", default="curves,options", help="of curves, options, profile")
    p.add_argument("--quick", action="store_true", help="a tiny model, L 128 and 256 only")
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank:
        rank_main(args)
        exit_rank(0)
    if args.quick:
        args.sizes, args.l0, args.l_max, args.budget_min, args.options_min = "quick", 128, 256, 3, 4
    args.out.mkdir(parents=True, exist_ok=True)
    sizes, rows, t0 = args.sizes.split(","), [], time.monotonic()
    print(f"sizes {sizes}, L from {args.l0}, cap {args.cap_gib} GiB per rank, {args.steps} steps per point", flush=True)
    if "curves" in args.sections:
        end = args.section_end = time.monotonic() + 60 * args.budget_min  # a point may outrun its series' share
        todo = [(size, align) for size in sizes for align in (False, True)]
        for i, (size, align) in enumerate(todo):  # each series gets an equal share of what is left
            budget = Budget((end - time.monotonic()) / 60 / (len(todo) - i))
            series("curves", size, align, [], args, budget, rows)
    if "options" in args.sections:
        end = args.section_end = time.monotonic() + 60 * args.options_min
        args.cap_gib = args.options_cap_gib or args.cap_gib
        chosen = {n: e for n, e in OPTIONS.items() if not args.options or n in args.options.split(",")}
        for i, (name, extra) in enumerate(chosen.items()):
            budget = Budget((end - time.monotonic()) / 60 / (len(chosen) - i))
            series(name, args.options_size or sizes[-1], True, extra, args, budget, rows)
    if "profile" in args.sections:  # plain ZeRO-3 off and on, then each option named in --options (alignment on)
        named = [n for n in (args.options or "").split(",") if n]
        for align, extra in [(False, []), (True, []), *[(True, OPTIONS[n]) for n in named]]:
            over = overrides(sizes[-1], args.l0, align, extra, args.steps)
            res = run_capped(__file__, 2, ["--steps", str(args.steps), "--overrides", json.dumps(over), "--profile"],
                             args.out / "cost-point.json", args.cap_gib * 1024, args.point_timeout, MALLOC)
            rows.append({**res, "section": "profile", "size": sizes[-1], "align": align, "seq_len": args.l0,
                         "overrides": over})
            (args.out / "cost-profile.json").write_text(json.dumps(rows, indent=1))
            if res["status"] == "ok" and res.get("profile"):
                prof = res["profile"]
                shares = ", ".join(f"{g} {v / prof['total_s']:.0%}" for g, v in
                                   sorted(prof["groups"].items(), key=lambda kv: -kv[1]))
                print(f"  profile {sizes[-1]} align {'on ' if align else 'off'} {' '.join(extra)} L {args.l0}: "
                      f"step {res['step_s']:.2f} s "
                      f"(profiled), rank 0 self CPU {prof['total_s']:.2f} s: {shares}", flush=True)
    print(f"done in {(time.monotonic() - t0) / 60:.1f} min; bench/cost_report.py prints the tables", flush=True)


if __name__ == "__main__":
    main()
