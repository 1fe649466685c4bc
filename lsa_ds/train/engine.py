"""DeepSpeed engine and one optimizer step.

The root module handed to DeepSpeed is `LMWithLoss`: one engine forward runs the decoder over the
micro-batch and the chunked losses over its hidden states, so each micro-step is one forward, one
autograd graph, one backward (what ZeRO-3's parameter and gradient hooks expect). The output
projection is called as a module, so ZeRO-3 gathers its sharded weight chunk by chunk.

Losses come back as (sum, count); how they become one loss normalised over the whole optimizer
step, whatever DeepSpeed's gradient averaging, is the method's rule (`lsa_ds.align.objective`).
Under sequence parallelism each rank computes the sums of its slice, and the counts are taken
once per SP group.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from lsa_ds.align import pair_exchange
from lsa_ds.align.losses import alignment_losses
from lsa_ds.align.objective import loss_scale, micro_step_loss, step_means
from lsa_ds.align.views import IGNORE
from lsa_ds.model.adapters import hf_of
from lsa_ds.model.memory import offloaded_activations
from lsa_ds.recipe import Recipe
from lsa_ds.train import sequence_parallel


class LMWithLoss(nn.Module):
    """A causal LM whose forward returns loss sums (CE, and the long-short divergence) instead of logits.

    One forward covers both views: rows are [long views; short views] when `pair_mask` is given.
    """

    def __init__(self, lm: nn.Module, recipe: Recipe):
        super().__init__()
        self.lm = lm
        self.align = recipe.align
        self.sp = sequence_parallel.size(recipe)
        self.offload = recipe.model.activation_offload

    @property
    def hf(self) -> nn.Module:
        """The transformers model (inside the peft wrapper when adapters train)."""
        return hf_of(self.lm)

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        decoder = getattr(self.hf, self.hf.base_model_prefix)
        with offloaded_activations(self.offload and self.training):
            return decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                pair_mask: torch.Tensor | None = None, shifts: torch.Tensor | None = None,
                with_divergence: bool = True) -> dict[str, torch.Tensor]:
        if self.sp > 1 and self.training:
            return self._sp_forward(input_ids, labels, position_ids, pair_mask, shifts, with_divergence)
        return self._losses(self.hidden_states(input_ids, position_ids), labels, pair_mask, shifts, with_divergence)

    def _losses(self, hidden, labels, pair_mask, shifts, with_divergence) -> dict[str, torch.Tensor]:
        a = self.align
        return alignment_losses(hidden, labels, self.hf.get_output_embeddings(), pair_mask, shifts,
                                divergence=a.divergence, detach=a.detach, chunk_tokens=a.chunk_tokens,
                                with_divergence=with_divergence)

    def _sp_forward(self, input_ids, labels, position_ids, pair_mask, shifts, with_divergence):
        """This rank's columns [r·c, (r+1)·c) of every row through the decoder (Ulysses attention
        inside); with pairs, the long rows rotated across the group (hidden states by the pair
        exchange, labels locally: every rank has them) so each pair sits at one slot, shifts 0."""
        L, group = input_ids.shape[1], sequence_parallel.group()
        c, r = L // self.sp, dist.get_rank(group)
        cols = slice(r * c, (r + 1) * c)
        hidden = self.hidden_states(input_ids[:, cols], position_ids[:, cols])
        if pair_mask is None:
            return self._losses(hidden, labels[:, cols], None, None, with_divergence)
        B = pair_mask.shape[0]
        long_h = pair_exchange.rotate_long(hidden[:B], shifts, L, group)
        long_y = pair_exchange.rotated_labels(labels[:B], shifts)[:, cols]
        return self._losses(torch.cat([long_h, hidden[B:]]), torch.cat([long_y, labels[B:, cols]]),
                            pair_mask[:, cols], torch.zeros_like(shifts), with_divergence)


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
    # An empty group (LoRA adapters are all matrices) is dropped by ZeRO, and the scheduler built
    # on this optimizer would then count one group too many.
    groups = [g for g in groups if g["params"]]
    if o.impl == "deepspeed":
        # deferred: DeepSpeed is imported on ranks only (never by the `lsa train` parent)
        from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam

        cls = DeepSpeedCPUAdam if not torch.cuda.is_available() else FusedAdam
        return cls(groups, lr=o.lr, betas=o.betas, eps=o.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, **adamw_kernel(o.impl))


def adamw_kernel(impl: str) -> dict:
    """torch.optim.AdamW's kernel choice for optim.impl: fused (one kernel over all tensors; torch
    has it for CPU and CUDA alike) where this device has it, else foreach; `torch` leaves torch's
    own default (a per-tensor loop on CPU)."""

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if impl == "fused":
        return {"fused": True} if device in _get_fused_kernels_supported_devices() else {"foreach": True}
    return {"foreach": True} if impl == "foreach" else {}


@dataclass
class StepStats:
    loss: float
    ce: float
    tokens: int
    """Target tokens of the step, all ranks (both views' CE targets)."""
    rows: int
    """Sequences the model ran forward and backward this step, all ranks (long and short views are
    a row each; a sequence-parallel group's shared rows once): what throughput counts."""
    grad_norm: float | None
    lr: float
    step_time: float
    misalign: float | None = None
    """The configured divergence per aligned pair (None when the step applied none)."""
    misalign_sce: float | None = None
    misalign_skl: float | None = None
    ce_gap: float | None = None


class Engine:
    """Owns the DeepSpeed engine: build, train step, evaluation loss, consolidated weights."""

    def __init__(self, recipe: Recipe, ds_config: dict, lm: nn.Module, total_steps: int):
        # deferred: DeepSpeed is imported on ranks only (never by the `lsa train` parent)
        import deepspeed

        self.recipe = recipe
        self.module = LMWithLoss(lm, recipe)
        optimizer = make_optimizer(recipe, self.module)
        self._group_weight_decay = [g["weight_decay"] for g in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(recipe, total_steps))
        mpu = sequence_parallel.register(recipe, self.module.hf)  # None without sequence parallelism
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, mpu=mpu)
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

    def train_step(self, micro_batches: list[dict], measure_divergence: bool = True, poison: bool = False) -> StepStats:
        """One optimizer step over this rank's micro-batches (views from `lsa_ds.align.views`).

        loss = CE + alpha * mean divergence over aligned pairs, both normalised over the whole step
        (all micro-batches, all ranks: `lsa_ds.align.objective`). When the divergence is not measured
        (a step that `align.every` skips) the pairs are dropped; with alpha 0 it is measured and
        logged but not backpropagated. Either way such a step is exactly CE over both views. `poison` makes the loss non-finite on purpose (a test hook for the
        numerics guard)."""
        t0 = time.perf_counter()
        alpha = self.recipe.align.alpha
        if not measure_divergence:
            micro_batches = [{k: v for k, v in mb.items() if k not in ("pair_mask", "shifts")} for mb in micro_batches]
        tokens = sum(int((torch.as_tensor(mb["labels"]) != IGNORE).sum()) for mb in micro_batches)
        pairs = sum(int(torch.as_tensor(mb["pair_mask"]).sum()) for mb in micro_batches if "pair_mask" in mb)
        rows = sum(len(mb["input_ids"]) for mb in micro_batches)
        # every rank of a sequence-parallel group holds the whole micro-batch: count it once
        tokens, pairs, rows = (x / self.module.sp for x in self._global_sum([tokens, pairs, rows]))
        scale = loss_scale(self.world, len(micro_batches))
        sums = dict.fromkeys(("ce_sum", "div_sum", "sce_sum", "skl_sum", "gap_sum"), 0.0)
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step uses (the scheduler moves it on)
        self.ds.train()
        for mb in micro_batches:
            out = self.ds(**self._to_device(mb))
            loss = micro_step_loss(out, alpha, tokens, pairs, scale, with_pairs="pair_mask" in mb)
            if poison:
                loss = loss * float("nan")
            self.ds.backward(loss)
            self.ds.step()  # DeepSpeed applies the optimizer only at the accumulation boundary
            for key in sums:
                sums[key] += float(out[key].detach()) if key in out else 0.0
        totals = dict(zip(sums, self._global_sum(list(sums.values()))))
        if poison:
            totals["ce_sum"] = float("nan")
        means = step_means(totals, alpha, tokens, pairs)
        norm = self.ds.get_global_grad_norm()
        return StepStats(loss=means["loss"], ce=means["ce"], tokens=int(tokens), rows=round(rows),
                         grad_norm=None if norm is None else float(norm), lr=lr, step_time=time.perf_counter() - t0,
                         misalign=means["div_sum"], misalign_sce=means["sce_sum"], misalign_skl=means["skl_sum"],
                         ce_gap=means["gap_sum"])

    @torch.no_grad()
    def eval_sums(self, batches: list[dict]) -> dict[str, float]:
        """Loss sums over all ranks' batches (ce_sum, ce_count, sce_sum, skl_sum, pair_count, ...)."""
        self.ds.eval()
        sums: dict[str, float] = {}
        for mb in batches:
            out = self.ds(**self._to_device(mb), with_divergence=False)
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        return dict(zip(sums, self._global_sum(list(sums.values()))))

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full LM weights on rank 0 (None elsewhere); gathers ZeRO-3 shards. Keys as the HF model's."""
        if self.ds.zero_optimization_partition_weights():
            sd = self.ds._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.module.state_dict() if dist.get_rank() == 0 else None
        if sd is None:
            return None
        return {k.removeprefix("lm."): v.detach().cpu().clone() for k, v in sd.items()}
