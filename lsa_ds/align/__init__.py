"""The long-short alignment method (Du et al., ICML 2025), in one place: views, losses, the rule.

    views           windows -> [long; short] views, seeded shifts, aligned-pair masks (numpy)
    losses          chunked CE and divergences (SCE, SKL, JS) from hidden states: no [2B, L, V] logits
    objective       CE + alpha * divergence, normalised over the whole optimizer step
    pair_exchange   under sequence parallelism: every pair brought onto one rank
    hf_trainer      `AlignmentTrainer`, the same loss in a Hugging Face `Trainer` (imports
                    transformers, so this package does not import it: `from lsa_ds.align.hf_trainer
                    import AlignmentTrainer`)

Nothing imported here needs DeepSpeed or transformers. A training loop of your own makes one
micro-step's loss like this (`model` a transformers causal LM such as `LlamaForCausalLM`;
`windows` [B, >= L + E_max + 1] token ids and `ids` their global sample indices, which key the
shifts; tests/align/test_hf_trainer.py runs this block):

    import torch
    from lsa_ds.align import alignment_losses, draw_shifts, make_views, micro_step_loss

    shifts = draw_shifts(ids, seed, 1, L // 2)                     # E per window, in [1, E_max]
    v = {k: torch.as_tensor(x) for k, x in make_views(windows, L, shifts).items()}  # rows [2B, L]
    hidden = model.model(input_ids=v["input_ids"], position_ids=v["position_ids"],
                         use_cache=False).last_hidden_state        # ONE forward of both views
    sums = alignment_losses(hidden, v["labels"], model.lm_head, v["pair_mask"], v["shifts"])
    loss = micro_step_loss(sums, 0.1, sums["ce_count"].item(), sums["pair_count"].item(),
                           scale=1, with_pairs=True)               # CE + 0.1 * mean SCE
    loss.backward()

With several micro-batches per optimizer step (or several ranks), pass the whole step's target and
pair counts instead of this micro-batch's and `scale=loss_scale(world, grad_accum)` for an engine
that averages gradients over both (objective.py; `AlignmentTrainer` does this for `Trainer`).

docs/design.md ("The method") is the contract these functions implement; its "API" section lists them.
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
