"""Training-step benchmark: alpha 0.1 vs alpha 0 vs a naive HF-style step, 2 ranks ZeRO-3 on CPU.

    python bench/bench_step.py [--seq-len 1024] [--vocab 32000] [--steps 6] [--out bench/out]
    python bench/bench_step.py --arenas glibc,2    # the same, once per malloc setting, interleaved

Every variant trains the same model (LLaMA, hidden 256, 4 layers) on the same [A; S] views:
- `alpha0`:  our step, CE over both views (divergence not applied)
- `alpha01`: our step, CE + 0.1 · SCE over aligned pairs (chunked, closed-form gradients)
- `naive`:   what a hand-made HF-Trainer script does: two separate engine forwards (long, short),
             materialised logits, CE and SCE through autograd
Each variant is its own 2-rank DeepSpeed launch (so peak RSS is its own); this script runs them one
after another and reports step time and peak RSS ratios. Step time is reported twice: wall clock
(the truth on an idle machine) and the CPU seconds both ranks spent in the step (process time,
which other load on a shared machine barely moves, as the variants run one after another). Not a
test: it only measures.

`--arenas glibc,2` runs every variant under glibc's default malloc (one arena per thread) and with
`MALLOC_ARENA_MAX=2`, alternating the settings, and adds the ratios between them (bench/README.md:
no difference beyond run-to-run noise, so `lsa train` leaves malloc alone).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ranks import run_ranks, timed_steps  # bench/ranks.py, beside this script

from lsa_ds.train.distributed import exit_rank, init_distributed

VARIANTS = ("alpha0", "alpha01", "naive")


def rank_main(args) -> None:
    import deepspeed
    import numpy as np
    import torch
    import torch.nn.functional as F

    from lsa_ds.align.views import draw_shifts, make_views
    from lsa_ds.model.build import build_model
    from lsa_ds.model.config import build_hf_config
    from lsa_ds.recipe import load_recipe
    from lsa_ds.recipe.ds_config import resolve_ds_config
    from lsa_ds.train.engine import Engine

    rank, world = init_distributed()
    L, V = args.seq_len, args.vocab
    recipe = load_recipe(None, [
        "model.preset=tiny", "model.overrides={hidden_size: 256, intermediate_size: 688, num_hidden_layers: 4, "
        "num_attention_heads: 4, num_key_value_heads: 4, max_position_embeddings: %d}" % L,
        f"train.seq_len={L}", "train.micro_batch_size=1", f"train.max_steps={args.steps}",
        f"align.alpha={0.0 if args.variant == 'alpha0' else 0.1}"])
    ds_config = resolve_ds_config(recipe, world)
    lm = build_model(recipe, build_hf_config(recipe, V, 1, 2, None), ds_config)
    rng = np.random.default_rng(rank)

    def views():
        w = rng.integers(0, V, size=(1, recipe.window_tokens))
        return make_views(w, L, draw_shifts([int(rng.integers(1 << 30))], 0, 1, L // 2))

    if args.variant != "naive":
        engine = Engine(recipe, ds_config, lm, args.steps)

        def step():
            engine.train_step([views()], measure_divergence=args.variant == "alpha01")
    else:
        opt = torch.optim.AdamW(lm.parameters(), lr=1e-4)
        ds, _, _, _ = deepspeed.initialize(model=lm, optimizer=opt, config=ds_config)

        def step():
            v = {k: torch.as_tensor(x) for k, x in views().items()}
            a = ds(input_ids=v["input_ids"][:1], position_ids=v["position_ids"][:1]).logits.float()
            s = ds(input_ids=v["input_ids"][1:], position_ids=v["position_ids"][1:]).logits.float()
            ce = F.cross_entropy(torch.cat([a, s]).reshape(-1, V), v["labels"].reshape(-1))
            e = int(v["shifts"][0])
            lp, lq = a[0, e:].log_softmax(-1), s[0, :L - e].log_softmax(-1)
            sce = (-(lp.exp() * lq).sum(-1) - (lq.exp() * lp).sum(-1)).mean()
            ds.backward(ce + 0.1 * sce)
            ds.step()

    timing = timed_steps(step, args.steps)
    if rank == 0:
        Path(args.result).write_text(json.dumps({"variant": args.variant, **timing}))


def launch(variant: str, args, out: Path, arenas: str = "glibc") -> dict:
    return run_ranks(__file__, 2, ["--variant", variant, "--seq-len", str(args.seq_len), "--vocab", str(args.vocab),
                                   "--steps", str(args.steps)], out / f"step-{variant}-{arenas}.json",
                     {"MALLOC_ARENA_MAX": None if arenas == "glibc" else arenas})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    p.add_argument("--arenas", default="glibc", help="comma-separated malloc settings: glibc (default) or a MALLOC_ARENA_MAX value")
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank:
        rank_main(args)
        exit_rank(0)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = args.arenas.split(",")
    runs = {a: {} for a in settings}
    for v in VARIANTS:  # settings alternate, so slow drift in machine load hits both alike
        for a in settings:
            runs[a][v] = launch(v, args, args.out, a)
    print(f"L={args.seq_len} V={args.vocab} hidden 256, 4 layers, 2 ranks ZeRO-3 (gloo, 1 thread each)")
    ratios = {}
    for a, res in runs.items():
        print(f"malloc arenas: {a}")
        ratios[a] = report(res)
    if len(settings) == 2:
        (a, ra), (b, rb) = runs.items()
        print(f"{b} / {a}:")
        for v in VARIANTS:
            print(f"  {v:8s} step time {rb[v]['step_s'] / ra[v]['step_s']:.3f}   CPU {rb[v]['cpu_s'] / ra[v]['cpu_s']:.3f}"
                  f"   peak RSS {rb[v]['peak_rss_mb'] / ra[v]['peak_rss_mb']:.3f}")
    (args.out / "step.json").write_text(json.dumps({"results": runs, "ratios": ratios}, indent=2))


def report(res: dict) -> dict:
    base, ours, naive = res["alpha0"], res["alpha01"], res["naive"]
    rows = [("alpha 0.1 / alpha 0, step time", ours["step_s"] / base["step_s"], "<= 1.05"),
            ("alpha 0.1 / alpha 0, step CPU time", ours["cpu_s"] / base["cpu_s"], "<= 1.05"),
            ("alpha 0.1 / alpha 0, peak RSS", ours["peak_rss_mb"] / base["peak_rss_mb"], "<= 1.10"),
            ("ours (alpha 0.1) / naive, step time", ours["step_s"] / naive["step_s"], "<= 0.65"),
            ("ours (alpha 0.1) / naive, step CPU time", ours["cpu_s"] / naive["cpu_s"], "<= 0.65"),
            ("ours (alpha 0.1) / naive, peak RSS", ours["peak_rss_mb"] / naive["peak_rss_mb"], "< 1")]
    for v, r in res.items():
        print(f"  {v:8s} median step {r['step_s']:.3f} s  CPU {r['cpu_s']:.3f} s   peak RSS {r['peak_rss_mb']:.0f} MiB   steps {[round(t, 2) for t in r['all_step_s']]}")
    for name, value, want in rows:
        print(f"  {name:38s} {value:.3f}   (target {want})")
    return {n: v for n, v, _ in rows}


if __name__ == "__main__":
    main()
