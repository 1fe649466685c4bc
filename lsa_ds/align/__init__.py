"""The long-short alignment method (Du et al., ICML 2025), in one place: views, losses, the rule.

    views           windows -> [long; short] views, seeded shifts, aligned-pair masks (numpy)
    losses          chunked CE and divergences (SCE, SKL, JS) from hidden states: no [2B, L, V] logits
    objective       CE + alpha * divergence, normalised over the whole optimizer step
    pair_exchange   under sequence parallelism: every pair brought onto one rank

Nothing here imports DeepSpeed or transformers: a training loop of your own calls

    views = make_views(windows, L, draw_shifts(ids, seed, 1, L // 2))       # [2B, L] rows
    hidden = model.model(input_ids=..., position_ids=...).last_hidden_state
    sums = alignment_losses(hidden, labels, model.lm_head, views["pair_mask"], views["shifts"])
    loss = micro_step_loss(sums, alpha, tokens, pairs, scale=1, with_pairs=True)

docs/design.md ("The method") is the contract these functions implement.
"""

from lsa_ds.align.losses import alignment_losses, chunked_ce
from lsa_ds.align.objective import (
           divergence_applies,
           loss_scale,
           micro_step_loss,
           step_means,
)
from lsa_ds.align.pair_exchange import rotate_long, rotated_labels
from lsa_ds.align.views import (
           IGNORE,
           both_views,
           draw_shifts,
           make_views,
           micro_views,
           pair_mask,
)

__all__ = ["IGNORE", "alignment_losses", "both_views", "chunked_ce", "divergence_applies", "draw_shifts",
           "loss_scale", "make_views", "micro_step_loss", "micro_views", "pair_mask", "rotate_long",
           "rotated_labels", "step_means"]
