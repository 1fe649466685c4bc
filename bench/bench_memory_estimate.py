"""The dry run's memory estimate against measured peaks: 2 CPU ranks, ZeRO-3, gloo.

    nice -n 10 python bench/bench_memory_estimate.py [--steps 2] [--quick] [--malloc fixed|glibc]
        [--from-json FILE] [--out bench/out]

Every point of a small grid (model size x window length x alignment on/off x activation
checkpointing on/off) is its own 2-rank DeepSpeed launch (bench/ranks.py). Each rank imports
torch, DeepSpeed and transformers, joins the process group and reads its resident set: the
runtime's base. It then builds the model (ZeRO-3, partitioned at construction), the engine, and
runs `--steps` optimizer steps of `Engine.train_step` (the call `lsa train` makes per step) on
random windows; the measured figure is the larger rank's VmHWM (peak resident set) minus its base.
The predicted figure is `lsa_ds.model.estimate.estimate_memory(..., target="cpu")`'s device total
(what `lsa train --dry-run` prints, for CPU ranks). fp32, one thread per rank. Not a test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ranks import engine_inputs, run_ranks, status_mib  # bench/ranks.py, beside this script

from lsa_ds.train.distributed import exit_rank

MODELS = {
    # name: preset overrides (LLaMA), vocabulary
    "S-0.9M": ({"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "tie_word_embeddings": True}, 4096),
    "M-11M": ({"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
               "num_key_value_heads": 4, "tie_word_embeddings": True}, 32000),
    "L-52M": ({"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 6, "num_attention_heads": 8,
               "num_key_value_heads": 8, "tie_word_embeddings": False}, 32000),
}


MALLOC = {"fixed": {"MALLOC_MMAP_THRESHOLD_": "131072"}, "glibc": {"MALLOC_MMAP_THRESHOLD_": None}}
"""glibc raises its mmap threshold up to 32 MiB when a mapped block is freed, after which blocks below it
come from the heap and stay resident when freed: fragmentation the estimate names, not tensors."""


def overrides(model: str, seq_len: int, align: bool, ckpt: bool, steps: int) -> list[str]:
    shape, vocab = MODELS[model]
    shape = {**shape, "max_position_embeddings": seq_len}
    return ["model.preset=tiny", "model.overrides=" + json.dumps(shape), f"data.tokenizer.vocab_size={vocab}",
            f"train.seq_len={seq_len}", "train.micro_batch_size=1", f"train.max_steps={steps}",
            f"align.enabled={str(align).lower()}", f"model.activation_checkpointing={str(ckpt).lower()}"]


def rank_main(args) -> None:
    import deepspeed  # noqa: F401 (part of the runtime's base)
    import torch
    import torch.distributed as dist

    from lsa_ds.model.build import build_model
    from lsa_ds.train.engine import Engine

    rank, world, recipe, ds_config, hf_config, views = engine_inputs(args.overrides, args.steps)
    dist.barrier()
    base_rss, base_hwm = status_mib("VmRSS"), status_mib("VmHWM")
    phases = []  # (RSS, peak RSS) above the base after each phase
    mark = lambda: phases.append((status_mib("VmRSS") - base_rss, status_mib("VmHWM") - base_rss))  # noqa: E731
    lm = build_model(recipe, hf_config, ds_config)
    mark()
    engine = Engine(recipe, ds_config, lm, args.steps)
    mark()
    for i in range(args.steps):
        engine.train_step([views[i]])
        mark()
    peak = torch.tensor([status_mib("VmHWM") - base_rss, base_rss, base_hwm])
    every = [torch.zeros_like(peak) for _ in range(world)]
    dist.all_gather(every, peak)
    if rank == 0:
        Path(args.result).write_text(json.dumps({
            "measured_mib": max(float(p[0]) for p in every), "base_rss_mib": [float(p[1]) for p in every],
            "base_hwm_mib": [float(p[2]) for p in every], "phases_mib (rank 0: model, engine, steps)": phases}))


def predict(over: list[str], world: int = 2) -> dict:
    """What the dry run estimates for these overrides on CPU ranks (this process: no DeepSpeed)."""
    from lsa_ds.model.config import build_hf_config
    from lsa_ds.model.estimate import estimate_memory
    from lsa_ds.recipe import load_recipe
    from lsa_ds.recipe.ds_config import resolve_ds_config

    recipe = load_recipe(None, over)
    hf_config = build_hf_config(recipe, recipe.data.tokenizer.vocab_size, 1, 2, None)
    est = estimate_memory(recipe, hf_config, resolve_ds_config(recipe, world), world, target="cpu").to_dict()
    return {"predicted_mib": est["device_bytes"] / 2**20, "states_mib": est["model_states_bytes"] / 2**20,
            "activations_mib": est["activations_bytes"] / 2**20, "params": est["params"],
            "items": {i["name"]: i["bytes"] / 2**20 for i in est["items"]}}


def grid(quick: bool) -> list[tuple[str, int, bool, bool]]:
    if quick:
        return [("M-11M", 512, True, False)]
    points = [("S-0.9M", 2048, True, ckpt) for ckpt in (False, True)]
    points += [("M-11M", L, align, ckpt) for L in (512, 2048) for align in (True, False) for ckpt in (False, True)]
    return points + [("L-52M", 1024, True, ckpt) for ckpt in (False, True)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2, help="optimizer steps (the peak is reached in the second)")
    p.add_argument("--quick", action="store_true", help="one point only")
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    p.add_argument("--malloc", choices=MALLOC, default="fixed",
                   help="fixed (default): glibc's mmap threshold fixed at 128 KiB, so freed tensors leave the "
                        "resident set as they leave a GPU's allocated memory; glibc: its default dynamic threshold")
    p.add_argument("--from-json", type=Path, help="the measurements of an earlier run (its memory_estimate.json): "
                   "predict again, measure nothing")
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank:
        rank_main(args)
        exit_rank(0)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'model':7s} {'L':>5s} {'align':5s} {'ckpt':5s} {'states':>7s} {'buffers':>7s} {'activ.':>7s} "
          f"{'predicted':>9s} {'measured':>8s} {'ratio':>6s} {'base':>5s}   (MiB per rank, above the runtime base)",
          flush=True)
    for model, L, align, ckpt in grid(args.quick):
        over = overrides(model, L, align, ckpt, args.steps)
        if args.from_json:
            res = next(r for r in json.loads(args.from_json.read_text()) if r["overrides"] == over)
        else:
            res = run_ranks(__file__, 2, ["--steps", str(args.steps), "--overrides", json.dumps(over)],
                            args.out / "memory-estimate-point.json", MALLOC[args.malloc])
        res |= {"model": model, "seq_len": L, "align": align, "checkpointing": ckpt, "overrides": over,
                "malloc": args.malloc, **predict(over)}
        rows.append(res)
        buffers = res["predicted_mib"] - res["states_mib"] - res["activations_mib"]
        print(f"{model:7s} {L:5d} {'on' if align else 'off':5s} {'on' if ckpt else 'off':5s} {res['states_mib']:7.0f} "
              f"{buffers:7.0f} {res['activations_mib']:7.0f} {res['predicted_mib']:9.0f} {res['measured_mib']:8.0f} "
              f"{res['predicted_mib'] / res['measured_mib']:6.2f} {max(res['base_rss_mib']):5.0f}", flush=True)
    ratios = [r["predicted_mib"] / r["measured_mib"] for r in rows]
    within = sum(0.8 <= x <= 1.2 for x in ratios)
    print(f"predicted / measured: min {min(ratios):.2f}, max {max(ratios):.2f}; within ±20%: {within} of {len(rows)}")
    if not args.from_json:
        name = f"memory_estimate-{args.malloc}{'-quick' if args.quick else ''}.json"
        (args.out / name).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
