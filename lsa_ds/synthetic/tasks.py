"""The paper's synthetic tasks (§3) as pure functions: inputs, exact targets, output transforms.

An example of length `n` is `n` fair 0/1 tokens behind a BOS token: `[BOS, b_1, ..., b_n]`. The
BOS token gives a causal model something to count against (with no positional encoding, attention
to BOS is its only handle on length). The model reads its prediction at the last real token, index
`n`; batches are right-padded, and causal attention means padding never reaches a real position.

Tasks (the target of an example of length `n` with bits `b`):

- `mean`            mean(b), in [0, 1] at every length: the output range does not move.
- `length`          n: the output grows with length, past anything seen in training.
- `length-<f>`      the model regresses f(n) for f in {invsqrt, sqrt, log}; its output is mapped
                    back with f^-1 (clamped to f's range over n >= 1) before MSE against n.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

BIT_TOKENS = 2  # token ids 0 and 1 are the bits
BOS = 2  # the token in front of every example
PAD = 0  # right padding; never seen by a real position (causal attention)
VOCAB_SIZE = 3
# Keeps 1/y^2 finite when an invsqrt model predicts <= 0 (maps to a length of 1e12: an honest miss).
_INVSQRT_FLOOR = 1e-6


@dataclass(frozen=True)
class Reparam:
    """An invertible output transform f: the model regresses f(length) and is read through f^-1."""

    name: str
    """Suffix in the task name (`length-<name>`)."""
    forward: Callable[[torch.Tensor], torch.Tensor]
    """f, applied to true lengths (>= 1) to build training targets."""
    inverse: Callable[[torch.Tensor], torch.Tensor]
    """f^-1, clamped to f's range over lengths >= 1 so any model output maps to a length >= 1."""
    formula: str
    """f written out, for tables and docs."""


REPARAMS: dict[str, Reparam] = {
    "invsqrt": Reparam(
        "invsqrt",
        forward=lambda n: n.rsqrt(),
        # f maps [1, inf) onto (0, 1]: clamp into that range, then 1/y^2.
        inverse=lambda y: y.clamp(min=_INVSQRT_FLOOR, max=1.0).square().reciprocal(),
        formula="1/sqrt(n)",
    ),
    "sqrt": Reparam(
        "sqrt", forward=lambda n: n.sqrt(), inverse=lambda y: y.clamp(min=1.0).square(), formula="sqrt(n)"
    ),
    "log": Reparam(
        "log", forward=lambda n: n.log(), inverse=lambda y: y.clamp(min=0.0).exp(), formula="log(n)"
    ),
}

TASKS: tuple[str, ...] = ("mean", "length", *(f"length-{name}" for name in REPARAMS))
"""Every task `lsa synth --task` accepts, in report order."""


def reparam_of(task: str) -> Reparam | None:
    """The output transform of `task` (None for `mean` and plain `length`)."""
    check_task(task)
    return REPARAMS[task.removeprefix("length-")] if task.startswith("length-") else None


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {', '.join(TASKS)}")


def sample_lengths(batch: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """`batch` lengths uniform on the integers [low, high] (int64)."""
    return torch.randint(low, high + 1, (batch,), generator=generator)


def sample_tokens(lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[B, 1 + max(lengths)] int64: BOS, then `lengths[i]` fair bits, then PAD.

    Bits are drawn for the whole padded row and the tail overwritten, so the bits of a row depend
    only on the generator state, not on which lengths share the batch beyond the row width.
    """
    width = 1 + int(lengths.max())
    tokens = torch.randint(0, BIT_TOKENS, (len(lengths), width), generator=generator)
    tokens[:, 0] = BOS
    positions = torch.arange(width)
    tokens[positions[None, :] > lengths[:, None]] = PAD
    return tokens


def true_targets(task: str, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B] float64: what the task asks for, in the user's units (a mean, or a length).

    `mean` is computed exactly as (number of 1 bits) / n in float64.
    """
    check_task(task)
    if task == "mean":
        positions = torch.arange(tokens.shape[1])
        is_bit = (positions[None, :] >= 1) & (positions[None, :] <= lengths[:, None])
        ones = ((tokens == 1) & is_bit).sum(dim=1)
        return ones.double() / lengths.double()
    return lengths.double()


def training_targets(task: str, targets: torch.Tensor) -> torch.Tensor:
    """What the model regresses: f(target) for a reparameterised task, else the target itself."""
    reparam = reparam_of(task)
    return targets if reparam is None else reparam.forward(targets)


def decode_predictions(task: str, outputs: torch.Tensor) -> torch.Tensor:
    """Model outputs mapped back to the task's units: f^-1(output) for a reparameterised task."""
    reparam = reparam_of(task)
    return outputs if reparam is None else reparam.inverse(outputs)


def constant_baseline(task: str, train_max_len: int) -> tuple[str, Callable[[int], float]]:
    """(label, exact expected MSE at length n) of the obvious constant predictor for `task`.

    `mean`: always predict 0.5, whose MSE at length n is Var(mean of n fair bits) = 0.25 / n.
    `length` (all variants): always predict the longest training length, MSE (n - train_max_len)^2
    — what a model whose predictions "stick" at the training range scores.
    """
    check_task(task)
    if task == "mean":
        return "predict 0.5", lambda n: 0.25 / n
    return f"predict {train_max_len}", lambda n: float((n - train_max_len) ** 2)


def length_buckets(max_len: int, width: int = 10) -> list[tuple[int, int]]:
    """Inclusive length ranges [(1, 10), (11, 20), ...] covering 1..max_len."""
    return [(lo, min(lo + width - 1, max_len)) for lo in range(1, max_len + 1, width)]


def bucket_label(bucket: tuple[int, int]) -> str:
    lo, hi = bucket
    return str(lo) if lo == hi else f"{lo}-{hi}"

