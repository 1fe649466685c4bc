"""The rule combining CE and the divergence: micro-steps with uneven numbers of targets and pairs add
up to the token- and pair-weighted means of the whole step, not a mean of per-micro-batch means."""

from __future__ import annotations

import pytest
import torch

from lsa_ds.align import alignment_losses, divergence_applies, loss_scale, micro_step_loss, step_means
from lsa_ds.align.views import IGNORE, draw_shifts, make_views
from lsa_ds.recipe import load_recipe


@torch.no_grad()
def _sums(hidden, views, head, **kw):
    return alignment_losses(hidden, torch.as_tensor(views["labels"]), head, torch.as_tensor(views["pair_mask"]),
                            torch.as_tensor(views["shifts"]), **kw)


def _micro_batches(L=16, V=11, H=8, seed=0):
    """Three micro-batches of views with different numbers of targets (some IGNOREd) and pairs."""
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(H, V, bias=False)
    out = []
    for b, (positions, ignored) in enumerate((("overlap", 0), ("last", 5), ("overlap", 9))):
        windows = torch.randint(0, V, (2, L + L // 2 + 1), generator=g).numpy()
        views = make_views(windows, L, draw_shifts([2 * b, 2 * b + 1], 7, 1, L // 2), positions=positions)
        views["labels"][0, :ignored] = IGNORE
        hidden = torch.randn(4, L, H, generator=g) * (1 + 2 * b)  # sharper predictions: a different CE per batch
        out.append((hidden, views))
    return head, out


def test_micro_steps_add_up_to_the_global_token_and_pair_weighted_means():
    head, batches = _micro_batches()
    alpha = 0.3
    sums = [_sums(h, v, head, chunk_tokens=8) for h, v in batches]
    tokens = sum(float(s["ce_count"]) for s in sums)
    pairs = sum(float(s["pair_count"]) for s in sums)
    total = sum(micro_step_loss(s, alpha, tokens, pairs, scale=1, with_pairs=True) for s in sums)
    # the same step computed whole: every target's CE and every pair's SCE, pooled
    ce = sum(float(s["ce_sum"]) for s in sums) / tokens
    sce = sum(float(s["div_sum"]) for s in sums) / pairs
    assert float(total) == pytest.approx(ce + alpha * sce, rel=1e-6)
    per_batch_means = sum(float(s["ce_sum"] / s["ce_count"]) for s in sums) / len(sums)
    assert abs(per_batch_means - ce) > 1e-3  # the case is uneven enough that a mean of means differs
    means = step_means({k: sum(float(s[k]) for s in sums) for k in ("ce_sum", "div_sum", "sce_sum", "skl_sum",
                                                                       "gap_sum")}, alpha, tokens, pairs)
    assert means["loss"] == pytest.approx(float(total), rel=1e-6) and means["ce"] == pytest.approx(ce)
    assert means["div_sum"] == pytest.approx(sce) and means["sce_sum"] == pytest.approx(sce)


def test_the_scale_undoes_the_engines_averaging_and_steps_without_pairs_are_ce_only():
    head, batches = _micro_batches()
    s = _sums(*batches[0], head)
    one = micro_step_loss(s, 0.1, 40.0, 10.0, scale=1, with_pairs=True)
    assert loss_scale(world=4, grad_accum=2) == 8
    assert float(micro_step_loss(s, 0.1, 40.0, 10.0, scale=8, with_pairs=True)) == pytest.approx(8 * float(one))
    ce_only = micro_step_loss(s, 0.1, 40.0, 10.0, scale=1, with_pairs=False)
    assert float(ce_only) == pytest.approx(float(s["ce_sum"]) / 40.0)
    assert float(micro_step_loss(s, 0.1, 40.0, 0.0, scale=1, with_pairs=True)) == pytest.approx(float(ce_only))
    assert step_means(dict.fromkeys(("ce_sum", "div_sum", "sce_sum", "skl_sum", "gap_sum"), 2.0), 0.1, 4.0, 0)["loss"] == 0.5


@pytest.mark.parametrize("sets, steps", [
    ([], [1, 2, 3, 4]), (["align.every=2"], [2, 4]), (["align.alpha=0"], []), (["align.enabled=false"], []),
])
def test_the_divergence_applies_on_the_steps_the_recipe_says(sets, steps):
    align = load_recipe(None, sets).align
    assert [s for s in range(1, 5) if divergence_applies(align, s)] == steps
