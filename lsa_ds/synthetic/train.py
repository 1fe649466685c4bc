"""Train one regressor on one task and measure its test MSE at every length.

One run = (task, positional encoding, seed). Training examples have lengths uniform on
[1, train_max_len]; the loss is MSE against the task's training target (f(n) for a reparameterised
length task). Evaluation draws a fixed set of examples at every length 1..test_max_len — the same
examples for every task, encoding and seed, so curves are paired — decodes the outputs (f^-1) and
reports MSE in the task's own units.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from lsa_ds.synthetic import tasks
from lsa_ds.synthetic.model import TinyRegressor, parameter_count

EVAL_DATA_SEED = 20250613  # fixed: every run is scored on the same test examples


@dataclass(frozen=True)
class StudySettings:
    """Everything a run depends on besides (task, pe, seed). Defaults are the `lsa synth` study."""

    steps: int = 1500
    """Adam steps per run."""
    batch_size: int = 64
    """Training examples per step."""
    lr: float = 1e-3
    """Peak learning rate; cosine decay to 10% of it over `steps` (no warmup)."""
    weight_decay: float = 0.0
    """AdamW weight decay (0: plain Adam)."""
    d_model: int = 64
    """Transformer width."""
    n_layers: int = 2
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads per block."""
    train_min_len: int = 1
    """Shortest training length."""
    train_max_len: int = 10
    """Longest training length; lengths are uniform on [train_min_len, train_max_len]."""
    test_max_len: int = 50
    """Test lengths are 1..test_max_len."""
    eval_samples: int = 256
    """Test examples per length."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "d_model", "n_layers", "n_heads", "train_min_len", "eval_samples")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.train_min_len <= self.train_max_len <= self.test_max_len:
            raise ValueError("need train_min_len <= train_max_len <= test_max_len")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class RunResult:
    """One trained model's numbers."""

    task: str
    pe: str
    seed: int
    mse_by_length: list[float]
    """Test MSE (task units) at lengths 1..test_max_len; index i is length i + 1."""
    final_train_loss: float
    """Mean training loss (in the regressed units) over the last 10% of steps."""
    seconds: float
    """Wall time of training + evaluation."""
    parameters: int
    mean_prediction_by_length: list[float] = field(default_factory=list)
    """Mean decoded prediction at each length (shows where length predictions 'stick')."""

    def to_json(self) -> dict:
        return asdict(self)


def build_model(pe: str, settings: StudySettings) -> TinyRegressor:
    return TinyRegressor(
        vocab_size=tasks.VOCAB_SIZE,
        max_seq_len=1 + settings.test_max_len,  # BOS + the longest test example
        pe=pe,  # type: ignore[arg-type]
        d_model=settings.d_model,
        n_layers=settings.n_layers,
        n_heads=settings.n_heads,
    )


def train_model(task: str, pe: str, seed: int, settings: StudySettings) -> tuple[TinyRegressor, float]:
    """Train a fresh model; returns it (in eval mode) and its mean loss over the last 10% of steps."""
    tasks.check_task(task)
    torch.manual_seed(seed)  # model init
    data_rng = torch.Generator().manual_seed(seed)
    model = build_model(pe, settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / settings.steps)),
    )
    tail_start = settings.steps - max(1, settings.steps // 10)
    tail_losses: list[float] = []
    model.train()
    for step in range(settings.steps):
        lengths = tasks.sample_lengths(settings.batch_size, settings.train_min_len, settings.train_max_len, data_rng)
        tokens = tasks.sample_tokens(lengths, data_rng)
        target = tasks.training_targets(task, tasks.true_targets(task, tokens, lengths)).float()
        loss = F.mse_loss(model(tokens, readout=lengths), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step >= tail_start:
            tail_losses.append(loss.item())
    model.eval()
    return model, sum(tail_losses) / len(tail_losses)


@torch.no_grad()
def evaluate(model: TinyRegressor, task: str, settings: StudySettings) -> tuple[list[float], list[float]]:
    """(MSE, mean decoded prediction) at each length 1..test_max_len, on the fixed test examples."""
    rng = torch.Generator().manual_seed(EVAL_DATA_SEED)
    mse, mean_prediction = [], []
    for length in range(1, settings.test_max_len + 1):
        lengths = torch.full((settings.eval_samples,), length)
        tokens = tasks.sample_tokens(lengths, rng)
        predictions = tasks.decode_predictions(task, model(tokens, readout=lengths).double())
        errors = predictions - tasks.true_targets(task, tokens, lengths)
        mse.append(float(errors.square().mean()))
        mean_prediction.append(float(predictions.mean()))
    return mse, mean_prediction


def run_one(task: str, pe: str, seed: int, settings: StudySettings) -> RunResult:
    """Train and evaluate one (task, pe, seed)."""
    started = time.perf_counter()
    model, final_loss = train_model(task, pe, seed, settings)
    mse, mean_prediction = evaluate(model, task, settings)
    return RunResult(
        task=task,
        pe=pe,
        seed=seed,
        mse_by_length=mse,
        final_train_loss=final_loss,
        seconds=time.perf_counter() - started,
        parameters=parameter_count(model),
        mean_prediction_by_length=mean_prediction,
    )
