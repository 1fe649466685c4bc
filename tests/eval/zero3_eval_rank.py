"""Rank script for test_eval_zero3.py: the eval metrics on a ZeRO-3-partitioned model (2 ranks,
uneven shards) and on an unpartitioned copy of the same weights; rank 0 writes both to the last
argument (the launcher inserts --local_rank before it)."""

import json
import sys

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations import HfDeepSpeedConfig

from lsa_ds.eval import hf_logits_fn, measure_misalignment, perplexity_at
from lsa_ds.train.distributed import exit_rank, init_distributed

init_distributed()
cfg = LlamaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, max_position_embeddings=64)
plain = LlamaForCausalLM(cfg).eval()
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
             "zero_allow_untested_optimizer": True}
hf_ds = HfDeepSpeedConfig(ds_config)  # alive while the model is built: partitioned at construction
torch.manual_seed(0)
model = LlamaForCausalLM._from_config(cfg)
engine, *_ = deepspeed.initialize(model=model, config=ds_config, optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
engine.eval()
with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
    plain.load_state_dict({k: v.detach().clone() for k, v in engine.module.state_dict().items()})
windows = np.random.default_rng(1).integers(4, 300, size=(5, 33))  # 5 windows, 2 ranks: one dummy slot


def metrics(fn) -> dict:
    return {"nll": [r.nll.mean for r in perplexity_at(fn, windows, [16, 32], 8, batch_tokens=40).values()],
            "last_sce": measure_misalignment(fn, windows, 32, "last", 5, 0, batch_tokens=64).sce.mean,
            "overlap_skl": measure_misalignment(fn, windows, 32, "overlap", 3, 0, batch_tokens=64).skl.mean}


result = {"local_numel": sum(p.numel() for p in engine.module.parameters()),
          "zero3": metrics(hf_logits_fn(engine.module)), "plain": metrics(hf_logits_fn(plain))}
if dist.get_rank() == 0:
    with open(sys.argv[-1], "w") as f:
        json.dump(result, f)
exit_rank(0)
