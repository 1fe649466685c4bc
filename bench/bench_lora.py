"""Adapters versus full fine-tuning: LoRA r 8 vs every parameter, alignment on, 2 ranks ZeRO-3 on CPU.

    python bench/bench_lora.py [--seq-len 1024] [--vocab 32000] [--steps 6] [--repeats 2] [--out bench/out]

Both variants continue the same base (LLaMA hidden 256, 4 layers, tied, built from its config and
saved once to bench/out/lora-base) on the same [A; S] views (alpha 0.1, SCE): `full` trains every
parameter; `lora` trains LoRA r 8 (alpha 16) on the attention and MLP projections, the base frozen.
Each variant is its own 2-rank DeepSpeed launch (its peak RSS is its own); the variants alternate
`--repeats` times and the median of each counts. Reported as lora / full ratios: median step time
(wall clock and the CPU seconds both ranks spent), peak RSS per rank, and the size of one
checkpoint (`lsa_ds.train.checkpoint.save`: DeepSpeed's files plus ours) on disk. Not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from ranks import run_ranks, timed_steps  # bench/ranks.py, beside this script

from lsa_ds.train.distributed import exit_rank, init_distributed

VARIANTS = ("full", "lora")


def base_folder(out: Path, seq_len: int, vocab: int) -> Path:
    folder = out / f"lora-base-{seq_len}-{vocab}"
    if not (folder / "config.json").is_file():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=seq_len,
                          tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
        LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def rank_main(args) -> None:
    import numpy as np
    import torch.distributed as dist

    from lsa_ds.align.views import draw_shifts, make_views
    from lsa_ds.model.build import build_model, count_params
    from lsa_ds.model.config import build_hf_config
    from lsa_ds.recipe import load_recipe
    from lsa_ds.recipe.ds_config import resolve_ds_config
    from lsa_ds.train import checkpoint
    from lsa_ds.train.engine import Engine

    rank, world = init_distributed()
    L, V = args.seq_len, args.vocab
    run_dir = Path(args.result).with_suffix("")
    recipe = load_recipe(None, [
        "model.preset=null", f"model.path={args.base}", f"train.seq_len={L}", "train.micro_batch_size=1",
        f"train.max_steps={args.steps}", "align.alpha=0.1", f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
        *(["model.lora.r=8", "model.lora.alpha=16"] if args.variant == "lora" else [])])
    ds_config = resolve_ds_config(recipe, world)
    lm = build_model(recipe, build_hf_config(recipe, V, 1, 2, None), ds_config)
    engine = Engine(recipe, ds_config, lm, args.steps)
    rng = np.random.default_rng(rank)

    def views():
        w = rng.integers(0, V, size=(1, recipe.window_tokens))
        return make_views(w, L, draw_shifts([int(rng.integers(1 << 30))], 0, 1, L // 2))

    timing = timed_steps(lambda: engine.train_step([views()]), args.steps)
    if rank == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
    dist.barrier()
    tag = checkpoint.save(engine, run_dir, recipe, args.steps, args.steps * world)
    if rank == 0:
        size = sum(f.stat().st_size for f in (run_dir / "checkpoints" / tag).rglob("*") if f.is_file())
        trainable = count_params(lm, trainable=True)
        Path(args.result).write_text(json.dumps({"variant": args.variant, **timing, "checkpoint_bytes": size,
                                                 "trainable_params": trainable}))
        shutil.rmtree(run_dir, ignore_errors=True)


def launch(variant: str, args, base: Path, i: int) -> dict:
    return run_ranks(__file__, 2, ["--variant", variant, "--base", str(base), "--seq-len", str(args.seq_len),
                                   "--vocab", str(args.vocab), "--steps", str(args.steps)], args.out / f"lora-{variant}-{i}.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank:
        rank_main(args)
        exit_rank(0)
    args.out.mkdir(parents=True, exist_ok=True)
    base = base_folder(args.out, args.seq_len, args.vocab)
    runs = {v: [] for v in VARIANTS}
    for i in range(args.repeats):  # alternating, so slow drift in machine load hits both alike
        for v in VARIANTS:
            runs[v].append(launch(v, args, base, i))
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("step_s", "cpu_s", "peak_rss_mb", "checkpoint_bytes")}
           for v, rs in runs.items()}
    print(f"L={args.seq_len} V={args.vocab} hidden 256, 4 layers, tied; alpha 0.1; 2 ranks ZeRO-3 (gloo, 1 thread each); "
          f"{args.repeats} launches per variant, medians")
    for v in VARIANTS:
        m = med[v]
        print(f"  {v:5s} trainable {runs[v][0]['trainable_params']:>10,d}   step {m['step_s']:.3f} s   CPU {m['cpu_s']:.3f} s   "
              f"peak RSS/rank {m['peak_rss_mb']:.0f} MiB   checkpoint {m['checkpoint_bytes'] / 2**20:.1f} MiB")
    ratios = {k: med["lora"][k] / med["full"][k] for k in med["full"]}
    print("  lora / full:  " + "   ".join(f"{k} {r:.3f}" for k, r in ratios.items()))
    (args.out / "lora.json").write_text(json.dumps({"runs": runs, "medians": med, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
