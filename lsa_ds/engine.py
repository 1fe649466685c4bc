"""DeepSpeed engine and one optimizer step.

The root module handed to DeepSpeed is `LMWithLoss`: one engine forward runs the decoder over the
micro-batch and the chunked losses over its hidden states, so each micro-step is one forward, one
autograd graph, one backward (what ZeRO-3's parameter and gradient hooks expect). The output
projection is called as a module, so ZeRO-3 gathers its sharded weight chunk by chunk.

Normalisation: losses come back as (sum, count). DeepSpeed divides gradients by grad_accum and
averages them over data-parallel ranks, so a micro-step's backward uses
`sum * world * grad_accum / global_count`; the result is the exact token-weighted mean over the
whole optimizer step, however tokens fall across micro-batches and ranks.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lsa_ds.config import Recipe
from lsa_ds.losses import IGNORE, chunked_ce


class LMWithLoss(nn.Module):
    """A causal LM whose forward returns loss sums instead of logits."""

    def __init__(self, lm: nn.Module, chunk_tokens: int):
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        decoder = getattr(self.lm, self.lm.base_model_prefix)
        return decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.hidden_states(input_ids, position_ids)
        ce_sum, ce_count = chunked_ce(hidden, labels, self.lm.get_output_embeddings(), self.chunk_tokens)
        return {"ce_sum": ce_sum, "ce_count": ce_count}


def lr_lambda(recipe: Recipe, total_steps: int):
    """Multiplier of optim.lr at optimizer step s: linear warmup, then cosine/linear/constant."""
    o = recipe.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if o.schedule == "cosine" else 1 - progress
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * decay

    return f


def make_optimizer(recipe: Recipe, module: nn.Module) -> torch.optim.Optimizer:
    """AdamW with no weight decay on vectors (norms, biases); shapes read through ZeRO-3 partitioning."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if len(getattr(p, "ds_shape", p.shape)) < 2 else decay).append(p)
    o = recipe.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.impl == "deepspeed":
        from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam

        cls = DeepSpeedCPUAdam if not torch.cuda.is_available() else FusedAdam
        return cls(groups, lr=o.lr, betas=o.betas, eps=o.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


@dataclass
class StepStats:
    loss: float
    ce: float
    tokens: int
    grad_norm: float | None
    lr: float
    step_time: float
    misalign: float | None = None
    misalign_skl: float | None = None
    ce_gap: float | None = None


class Engine:
    """Owns the DeepSpeed engine: build, train step, evaluation loss, consolidated weights."""

    def __init__(self, recipe: Recipe, ds_config: dict, lm: nn.Module, total_steps: int):
        import deepspeed

        self.recipe = recipe
        self.module = LMWithLoss(lm, recipe.align.chunk_tokens)
        optimizer = make_optimizer(recipe, self.module)
        self._group_weight_decay = [g["weight_decay"] for g in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(recipe, total_steps))
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.world = dist.get_world_size()
        self.device = self.ds.device

    def restore_group_hyperparameters(self) -> None:
        """Re-apply per-group weight decay after loading a universal checkpoint: DeepSpeed copies the
        first group's hyperparameters onto every group (so norms would get weight decay)."""
        inner = getattr(self.ds.optimizer, "optimizer", self.ds.optimizer)
        for group, wd in zip(inner.param_groups, self._group_weight_decay):
            group["weight_decay"] = wd

    def _to_device(self, batch: dict) -> dict:
        return {k: torch.as_tensor(v).to(self.device) for k, v in batch.items()}

    def _global_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def train_step(self, micro_batches: list[dict], poison: bool = False) -> StepStats:
        """One optimizer step over this rank's micro-batches (each: input_ids, labels, position_ids).

        `poison` makes the loss non-finite on purpose (a test hook for the numerics guard)."""
        t0 = time.perf_counter()
        ga = len(micro_batches)
        local_count = sum(int((torch.as_tensor(mb["labels"]) != IGNORE).sum()) for mb in micro_batches)
        (global_count,) = self._global_sum([local_count])
        scale = self.world * ga / max(global_count, 1.0)
        ce_sum = 0.0
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step uses (the scheduler moves it on)
        self.ds.train()
        for mb in micro_batches:
            out = self.ds(**self._to_device(mb))
            if poison:
                out["ce_sum"] = out["ce_sum"] * float("nan")
            self.ds.backward(out["ce_sum"] * scale)
            self.ds.step()  # DeepSpeed applies the optimizer only at the accumulation boundary
            ce_sum += float(out["ce_sum"].detach())
        (ce_total,) = self._global_sum([ce_sum])
        ce = ce_total / max(global_count, 1.0)
        norm = self.ds.get_global_grad_norm()
        return StepStats(loss=ce, ce=ce, tokens=int(global_count), grad_norm=None if norm is None else float(norm),
                         lr=lr, step_time=time.perf_counter() - t0)

    @torch.no_grad()
    def eval_loss(self, batches: list[dict]) -> tuple[float, int]:
        """Mean next-token CE over all ranks' batches and the number of tokens it averages."""
        self.ds.eval()
        s = n = 0.0
        for mb in batches:
            out = self.ds(**self._to_device(mb))
            s += float(out["ce_sum"])
            n += float(out["ce_count"])
        s, n = self._global_sum([s, n])
        return s / max(n, 1.0), int(n)

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full LM weights on rank 0 (None elsewhere); gathers ZeRO-3 shards. Keys as the HF model's."""
        if self.ds.zero_optimization_partition_weights():
            sd = self.ds._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.module.state_dict() if dist.get_rank() == 0 else None
        if sd is None:
            return None
        return {k.removeprefix("lm."): v.detach().cpu().clone() for k, v in sd.items()}


def peak_memory_mb() -> float:
    """Peak accelerator memory if there is one, else this process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
