"""One rank of a gradient probe: build the trainer's engine for a recipe, run optimizer steps on the
windows the trainer would read, and record every parameter's full gradient at each accumulation
boundary (before the optimizer uses it) plus the step statistics. Launched by
tests/train/test_sequence_parallel.py through the deepspeed launcher, with SP=2 on 2 ranks and SP=1 on 1.

    python -m deepspeed.launcher.runner --num_gpus N --no_local_rank tests/train/sp_grads_rank.py OUT.pt --set k=v ...
"""

from __future__ import annotations

import sys

import torch


def main(out: str, overrides: list[str]) -> None:
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_grad

    from lsa_ds.align.objective import divergence_measured
    from lsa_ds.align.views import micro_views
    from lsa_ds.data import open_cache
    from lsa_ds.model.build import build_model
    from lsa_ds.model.config import build_hf_config
    from lsa_ds.recipe import load_recipe
    from lsa_ds.recipe.ds_config import resolve_ds_config
    from lsa_ds.train.distributed import init_distributed
    from lsa_ds.train.engine import Engine
    from lsa_ds.train.loop import window_loader

    rank, world = init_distributed()
    recipe = load_recipe(None, overrides)
    cache = open_cache(recipe.data)
    tok = cache.tokenizer
    ds_config = resolve_ds_config(recipe, world)
    lm = build_model(recipe, build_hf_config(recipe, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id), ds_config)
    engine = Engine(recipe, ds_config, lm, recipe.train.max_steps)
    loader = window_loader(recipe, cache, rank, world)
    names = [n for n, p in engine.module.named_parameters() if p.requires_grad]
    params = dict(engine.module.named_parameters())
    grads: list[dict[str, torch.Tensor]] = []
    step = engine.ds.step

    def capture() -> None:  # every rank takes part: the full gradient is gathered from the shards
        if engine.ds.is_gradient_accumulation_boundary():
            grads.append({n: safe_get_full_grad(params[n]).detach().clone() for n in names})
        step()

    engine.ds.step = capture
    stats = []
    a = recipe.align
    for k in range(1, recipe.train.max_steps + 1):
        micro = [micro_views(recipe, ids, w) for ids, w in loader.next_step()]
        s = engine.train_step(micro, measure_divergence=divergence_measured(a, k))
        stats.append({"loss": s.loss, "ce": s.ce, "tokens": s.tokens, "misalign_sce": s.misalign_sce,
                      "misalign_skl": s.misalign_skl, "grad_norm": s.grad_norm})
    if rank == 0:
        torch.save({"grads": grads, "stats": stats}, out)
    dist.barrier()


if __name__ == "__main__":
    from lsa_ds.train.distributed import exit_rank

    args = sys.argv[1:]
    main(args[0], [a for i, a in enumerate(args[1:]) if args[i] == "--set"])
    exit_rank(0)
