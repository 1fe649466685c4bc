"""The rule that makes one loss of CE and the long-short divergence over a whole optimizer step.

    loss = CE + alpha * mean divergence over aligned pairs

Both means run over **all** targets (pairs) of the optimizer step, across micro-batches and
ranks: token-weighted, not a mean of per-micro-batch means. Each micro-step's forward returns
sums (`lsa_ds.align.losses`); the global counts are known before the first micro-step (the views
say which targets and pairs exist), so each micro-step's backward already carries its exact share.

The engine averages gradients: DeepSpeed divides them by grad_accum and averages them over the
data-parallel ranks (with sequence parallelism ZeRO-3's reduce-scatter averages over every rank).
A sum normalised by the global count must therefore be multiplied by `world * grad_accum` to come
out as the true mean (`loss_scale`). Pure arithmetic, no torch.distributed, no DeepSpeed: an HF
Trainer or a hand-written loop applies the same rule with its own reduction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    import torch

    from lsa_ds.recipe.schema import AlignConfig

LOGGED_PER_PAIR = ("div_sum", "sce_sum", "skl_sum", "gap_sum")
"""The loss sums reported per aligned pair: the configured divergence, SCE and symmetric KL
(whatever the divergence is), and the CE gap (short minus long context)."""


def divergence_measured(align: AlignConfig, step: int) -> bool:
    """Whether step `step` computes the divergence of its pairs: where it applies, and on every step
    of an alpha-0 arm (both views run anyway, so its training logs misalignment beside the arms it
    is compared with; with alpha 0 the loss, and so every gradient, is CE alone)."""
    return divergence_applies(align, step) or (align.enabled and align.alpha == 0)


def divergence_applies(align: AlignConfig, step: int) -> bool:
    """Whether optimizer step `step` (1-based) adds the divergence: alignment on, alpha > 0 and
    `align.every` dividing the step. On other steps the pairs are dropped and the step is exactly
    CE over the views the batch has (both, with alignment on)."""
    return align.enabled and align.alpha > 0 and step % align.every == 0


def loss_scale(world: int, grad_accum: int) -> int:
    """What a globally normalised sum is multiplied by before backward: it undoes the engine's
    1/grad_accum and its average over `world` ranks (module docstring)."""
    return world * grad_accum


def micro_step_loss(sums: dict[str, torch.Tensor], alpha: float, tokens: float, pairs: float,
                    scale: float, with_pairs: bool) -> torch.Tensor:
    """The tensor one micro-step backpropagates: its CE sum over the step's global target count,
    plus alpha times its divergence sum over the step's global pair count (when the micro-batch
    has pairs and the step has any), both times `scale` (`loss_scale`)."""
    loss = sums["ce_sum"] * (scale / max(tokens, 1.0))
    if with_pairs and pairs > 0 and alpha:  # alpha 0 measures the divergence without backpropagating it
        loss = loss + alpha * sums["div_sum"] * (scale / pairs)
    return loss


def step_means(totals: dict[str, float], alpha: float, tokens: float, pairs: float) -> dict[str, float | None]:
    """The optimizer step's reported figures from its global sums: `ce` (mean per target), each
    `LOGGED_PER_PAIR` sum per pair (None without pairs) and `loss` = ce + alpha * divergence."""
    ce = totals["ce_sum"] / max(tokens, 1.0)
    per_pair = {key: totals[key] / pairs if pairs else None for key in LOGGED_PER_PAIR}
    return {"loss": ce + alpha * (per_pair["div_sum"] or 0.0), "ce": ce, **per_pair}
