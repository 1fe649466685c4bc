"""The long-short alignment regularizer inside a Hugging Face `Trainer` (transformers 5).

Many people train with `transformers.Trainer` (directly, or through LLaMA-Factory or TRL) and
would add one loss term rather than switch recipes. `AlignmentTrainer` is that term: a `Trainer`
whose `compute_loss` implements docs/design.md, "The method", with the same functions the
DeepSpeed recipe calls (`views`, `losses`, `objective`), so its loss and gradients are the
recipe's on the same windows (tests/align/test_hf_trainer.py checks it).

    dataset item  {"input_ids": a window of L + E_max + 1 tokens, "sample_id": its global index}
    batch         {"input_ids": [B, W], "sample_id": [B]} (default_data_collator stacks them)
    compute_loss  shifts from (seed, sample_id) -> rows [long; short] [2B, L], positions 0..L-1
                  -> ONE decoder forward -> chunked CE + divergence from the hidden states and
                  the output layer (never a [2B, L, V] logits tensor) -> objective

Normalisation. The recipe's loss is CE over *all* targets of the optimizer step plus alpha times
the divergence over *all* its aligned pairs (objective.py): token- and pair-weighted, not a mean of
per-micro-batch means. Trainer's own mechanism for this is `num_items_in_batch`: before each
optimizer step it fetches all gradient-accumulation micro-batches (`get_batch_samples`), counts
their `labels[..., 1:] != -100` (over all ranks when `average_tokens_across_devices`), hands the
count to every micro-step so that the model divides its CE *sum* by it, multiplies by the number
of processes to undo DDP's averaging, and skips its own division by the accumulation steps. That
is objective.py's rule for CE alone. Windows have no `labels`, so this class overrides
`get_batch_samples` to count what the views hold instead (targets and pairs of the whole step,
summed over ranks) and passes that `StepCounts` as `num_items_in_batch`; each micro-step then
backpropagates `micro_step_loss(..., scale=world)` and `loss_is_scaled_for_ga = True`. The result
is the recipe's normalisation under any `gradient_accumulation_steps` and world size. When
`compute_loss` is called without counts (directly, or from `prediction_step`) it normalises by the
micro-batch's own counts: one micro-batch per step is then the recipe exactly.

Wrappers. Unwrapped (one process, PEFT included) the decoder body is called directly, as the
recipe's engine does. Under DDP, FSDP or a DeepSpeed engine the forward must go through the
wrapper (DDP only all-reduces gradients of a forward it saw), so the whole model runs with
`output_hidden_states=True, logits_to_keep=1`: the same decoder pass, logits for one position only,
and the last hidden state (transformers 5 ties `hidden_states[-1]` to it). That path is tested
here on one process only.

Not covered: `evaluate()` (the batches carry no `labels`; use `lsa eval` on the saved model) and
sequence parallelism (the recipe's `train.sequence_parallel`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, default_data_collator

from lsa_ds.align.losses import KEYS, alignment_losses
from lsa_ds.align.objective import divergence_applies, micro_step_loss
from lsa_ds.align.views import IGNORE, draw_shifts, make_views
from lsa_ds.recipe.schema import AlignConfig

WINDOWS, SAMPLE_ID = "input_ids", "sample_id"
"""The batch keys: windows [B, W] and their global sample indices [B] (which key the shifts)."""


class StepCounts(NamedTuple):
    """What `AlignmentTrainer` passes as `num_items_in_batch`: the optimizer step's targets and
    aligned pairs over all its micro-batches and ranks, and whether the step applies the divergence."""
    tokens: float
    pairs: float
    with_pairs: bool


class TokenWindows(Dataset):
    """Consecutive windows of `window` tokens cut from one token stream (the last partial one
    dropped), each with its index as `sample_id`. The recipe's own data pipeline (`lsa prepare`)
    does more (documents, blending, shuffling); this is enough for a Trainer."""

    def __init__(self, tokens, window: int):
        self.tokens, self.window = torch.as_tensor(tokens, dtype=torch.long), window

    def __len__(self) -> int:
        return len(self.tokens) // self.window

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {WINDOWS: self.tokens[i * self.window:(i + 1) * self.window], SAMPLE_ID: i}


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a DDP/DeepSpeed/compile wrapper (`.module`, `._orig_mod`) and
    a PEFT wrapper (`get_base_model`; adapters are injected in place, so its body trains them)."""
    while is_wrapped(model):
        model = model.module if hasattr(model, "module") else model._orig_mod
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_wrapped(model: nn.Module) -> bool:
    """Whether a DDP/DeepSpeed engine (`.module`) or torch.compile (`._orig_mod`) wraps the model:
    then its forward must run through the wrapper (module docstring, "Wrappers")."""
    return hasattr(model, "module") or hasattr(model, "_orig_mod")


def decoder_hidden(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   through_wrapper: bool = False) -> torch.Tensor:
    """The decoder's final (normed) hidden states [N, L, H], from ONE forward of the body.

    Directly: `body(input_ids, position_ids).last_hidden_state`, the recipe engine's call. Through
    the wrapper: the whole model with logits for one position only (module docstring, "Wrappers")."""
    if through_wrapper:
        out = model(input_ids=input_ids, position_ids=position_ids, use_cache=False, output_hidden_states=True,
                    logits_to_keep=1)
        return out.hidden_states[-1]
    hf = unwrap(model)
    body = getattr(hf, hf.base_model_prefix)
    return body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state


class AlignmentTrainer(Trainer):
    """`transformers.Trainer` whose loss is CE + alpha × mean long-short divergence (the recipe's).

    seq_len: the training length L. align: the recipe's `align` section (`AlignConfig()` gives the
    paper's defaults: alpha 0.1, shifts [1, L // 2], overlap pairs, SCE). shift_seed keys the shifts
    with the sample ids (default `args.seed`). Windows must hold L + E_max + 1 tokens
    (`window_tokens`), whether or not alignment is enabled, so every arm reads the same text.
    Everything else is `Trainer`'s.
    """

    loss_is_scaled_for_ga = True  # each micro-step carries its exact share of the step (module docstring)

    def __init__(self, *args, seq_len: int, align: AlignConfig | None = None, shift_seed: int | None = None,
                 **kwargs):
        kwargs.setdefault("data_collator", default_data_collator)
        super().__init__(*args, **kwargs)
        self.seq_len, self.align = seq_len, align if align is not None else AlignConfig()
        self.shift_max = self.align.shift_max if self.align.shift_max is not None else max(1, seq_len // 2)
        if not 1 <= self.align.shift_min <= self.shift_max <= seq_len - 1:
            raise ValueError(f"shifts [{self.align.shift_min}, {self.shift_max}]: expected 1 <= shift_min <= "
                             f"shift_max <= L - 1 = {seq_len - 1}")
        self.shift_seed = self.args.seed if shift_seed is None else shift_seed
        self._logged = dict.fromkeys((*KEYS, "ce_count", "pair_count"), 0.0)

    @property
    def window_tokens(self) -> int:
        """Tokens per window: L + E_max + 1 (docs/design.md, "Windows and views")."""
        return self.seq_len + self.shift_max + 1

    # ------------------------------------------------------------------ columns and counts
    def _set_signature_columns_if_needed(self) -> None:
        """Keep `sample_id` when `remove_unused_columns` drops what the model's forward does not
        take (it keys the shifts). compute_loss says what to do if a Trainer version skips this."""
        super()._set_signature_columns_if_needed()
        if SAMPLE_ID not in self._signature_columns:
            self._signature_columns.append(SAMPLE_ID)

    def views(self, inputs: dict[str, Any], with_pairs: bool) -> dict[str, torch.Tensor]:
        """The model inputs of one batch of windows (`make_views` with seeded shifts; the long view
        only when alignment is off), on the windows' device. Without pairs (a step the divergence
        skips) both views are CE rows, as in the recipe."""
        if SAMPLE_ID not in inputs:
            raise KeyError(f"the batch has no {SAMPLE_ID!r} (keys: {sorted(inputs)}): each window needs its "
                           f"global index; set TrainingArguments(remove_unused_columns=False) if it was dropped")
        windows = torch.as_tensor(inputs[WINDOWS])
        if windows.dim() != 2 or windows.shape[1] < self.window_tokens:
            raise ValueError(f"windows {tuple(windows.shape)}: expected [B, >= L + E_max + 1 = {self.window_tokens}]")
        ids = torch.as_tensor(inputs[SAMPLE_ID]).tolist()
        a = self.align
        shifts = draw_shifts(ids, self.shift_seed, a.shift_min, self.shift_max) if a.enabled else None
        v = make_views(windows.cpu().numpy(), self.seq_len, shifts, positions=a.positions, min_ratio=a.min_ratio,
                       ce_views=a.ce_views)
        if not with_pairs:
            v = {k: x for k, x in v.items() if k not in ("pair_mask", "shifts")}
        return {k: torch.as_tensor(x).to(windows.device) for k, x in v.items()}

    def _applies(self) -> bool:
        return divergence_applies(self.align, self.state.global_step + 1)  # the step about to be taken, 1-based

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """Trainer's prefetch of one optimizer step's micro-batches, with `StepCounts` (targets and
        pairs of the whole step, summed over ranks) in place of its label count."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        with_pairs = self._applies()
        counts = torch.zeros(2, dtype=torch.float64)
        for batch in batches:
            v = self.views(batch, with_pairs)
            counts[0] += int((v["labels"] != IGNORE).sum())
            counts[1] += int(v["pair_mask"].sum()) if "pair_mask" in v else 0
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts.to(device), reduction="sum").cpu()
        return batches, StepCounts(float(counts[0]), float(counts[1]), with_pairs)

    # ------------------------------------------------------------------ the loss
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: StepCounts | None = None):
        """One micro-step's loss: ONE decoder forward of [long; short] [2B, L], chunked CE and
        divergence sums (`alignment_losses`), normalised by the step's counts (`micro_step_loss`).
        Returns the sums as outputs when `return_outputs`."""
        counts = num_items_in_batch if isinstance(num_items_in_batch, StepCounts) else None
        with_pairs = counts.with_pairs if counts is not None else self._applies()
        v = self.views(inputs, with_pairs)
        hidden = decoder_hidden(model, v["input_ids"], v["position_ids"], through_wrapper=is_wrapped(model))
        a = self.align
        sums = alignment_losses(hidden, v["labels"], unwrap(model).get_output_embeddings(), v.get("pair_mask"),
                                v.get("shifts"), divergence=a.divergence, detach=a.detach,
                                chunk_tokens=a.chunk_tokens)
        if counts is None:  # this micro-batch is the whole step
            counts = StepCounts(float(sums["ce_count"]), float(sums["pair_count"]), with_pairs)
            scale = 1
        else:  # undo the average over ranks that DDP / DeepSpeed apply to gradients (objective.loss_scale)
            scale = self.accelerator.num_processes
        loss = micro_step_loss(sums, a.alpha, counts.tokens, counts.pairs, scale, with_pairs="pair_mask" in v)
        if model.training:  # one host sync for the logged sums
            for key, value in zip(self._logged, torch.stack([sums[k].detach() for k in self._logged]).tolist()):
                self._logged[key] += value
        return (loss, sums) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds this rank's `ce` and per-pair `misalign` (the configured divergence), `misalign_sce`,
        `misalign_skl` and `ce_gap` since the last training log to the loss Trainer logs."""
        if "loss" in logs and self._logged["ce_count"]:
            t = self._logged
            logs["ce"] = t["ce_sum"] / t["ce_count"]
            if t["pair_count"]:
                for name, key in (("misalign", "div_sum"), ("misalign_sce", "sce_sum"),
                                  ("misalign_skl", "skl_sum"), ("ce_gap", "gap_sum")):
                    logs[name] = t[key] / t["pair_count"]
            self._logged = dict.fromkeys(t, 0.0)
        super().log(logs, start_time)

