"""Rank 0's metrics sinks: metrics.jsonl (one JSON object per row, always), the reporters of
`run.report_to` (TensorBoard scalars in tb/, Weights & Biases in wandb/), a progress bar with ETA.
Other ranks get a MetricsLog that does nothing.

Every numeric key of a row goes to every reporter as `train/<key>` or `eval/<key>`. wandb is
optional (the `wandb` extra): `check_reporters` refuses a missing install before training starts;
the wandb run's id is kept in wandb/run-id, so `--resume` continues the same wandb run, and its
x-axis is the row's `step` (a resumed run logs its re-trained steps at their own step numbers).

The bar shows the parts of the loss separately (CE, misalignment when the regularizer is on),
tokens/s, TFLOP/s per rank and MFU (when the device's peak is known). When stderr is not a terminal
(a log file, CI) the bar would be carriage-return noise, so the same figures go out as plain lines,
at most one per PLAIN_EVERY_S seconds (and the last step).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from lsa_ds.errors import UserError

PLAIN_EVERY_S = 10.0
WANDB_INSTALL = "pip install 'lsa-ds[wandb]'"


def check_reporters(report_to: list[str]) -> None:
    """Refuse a reporter whose package is not installed, before any rank starts."""
    if "wandb" in report_to and importlib.util.find_spec("wandb") is None:
        raise UserError(f"run.report_to: wandb is not installed; {WANDB_INSTALL}")


def start_wandb(run_dir: Path, name: str, config: dict | None):
    """A wandb run whose files live in <run_dir>/wandb; the id saved there makes a resumed run
    continue the same wandb run. Project: WANDB_PROJECT, else lsa-ds (WANDB_ENTITY, WANDB_MODE and
    the API key are wandb's own environment variables)."""
    # deferred: wandb is an optional extra, imported only by rank 0 when run.report_to names it
    import wandb

    id_file = run_dir / "wandb" / "run-id"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lsa-ds"), name=name, id=run_id,
                     resume="allow" if run_id else None, dir=str(run_dir), config=config)
    id_file.parent.mkdir(exist_ok=True)
    id_file.write_text(run.id + "\n")
    run.define_metric("step")
    for prefix in ("train/*", "eval/*"):
        run.define_metric(prefix, step_metric="step")
    return run


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl. A line cut short (a run killed mid-write) is skipped: the rest
    is still worth reading."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def length_keys(row: dict, prefix: str = "loss@") -> dict[int, object]:
    """{N: value} of a row's `<prefix>N` keys (blended held-out data; per-source keys such as
    `loss@512/<source>` are left out)."""
    return {int(k[len(prefix):]): v for k, v in row.items() if k.startswith(prefix) and k[len(prefix):].isdigit()}


def source_losses(row: dict) -> dict[str, dict[int, float]]:
    """{source: {N: loss}} of an eval row's per-source keys `loss@N/<source>` (several sources only)."""
    out: dict[str, dict[int, float]] = {}
    for k, v in row.items():
        head, sep, source = k.partition("/")
        if sep and head.startswith("loss@") and head[5:].isdigit():
            out.setdefault(source, {})[int(head[5:])] = v
    return out


class MetricsLog:
    def __init__(self, run_dir: Path, steps: int, start_step: int, enabled: bool,
                 report_to: list[str] = ("tensorboard",), config: dict | None = None):
        """`config`: the resolved recipe (the wandb run's config); the wandb run is named after
        the run directory."""
        self.enabled = enabled
        if not enabled:
            return
        self.tb = self.wandb = None
        if "tensorboard" in report_to:
            # deferred: TensorBoard only on rank 0, which writes the logs
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        if "wandb" in report_to:
            self.wandb = start_wandb(run_dir, run_dir.name, config)
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)  # line-buffered: a kill loses no row
        self.steps, self.tty, self.last_plain = steps, sys.stderr.isatty(), 0.0
        self.bar = tqdm(total=steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0,
                        disable=not self.tty)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        prefix = "eval/" if row.get("kind") == "eval" else "train/"
        scalars = {prefix + k: v for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb is not None:
            self.wandb.log({"step": row["step"], **scalars})
        if row.get("kind") == "eval":
            self.note(f"eval step {row['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("loss@", "misalign"))))
        elif "loss" in row:
            figures = {"loss": f"{row['loss']:.4f}", "ce": f"{row['ce']:.4f}"}
            if row.get("misalign") is not None:
                figures["misalign"] = f"{row['misalign']:.4f}"
            figures.update({"tok/s": f"{row['tokens_per_s']:.0f}", "TFLOP/s/rank": f"{row['tflops_per_rank']:.3g}"})
            if row.get("mfu") is not None:
                figures["MFU"] = f"{100 * row['mfu']:.1f}%"
            figures["lr"] = f"{row['lr']:.2e}"
            if self.tty:
                self.bar.set_postfix(figures, refresh=False)
            elif time.monotonic() - self.last_plain >= PLAIN_EVERY_S or row["step"] == self.steps:
                self.last_plain = time.monotonic()
                self.note(f"step {row['step']}/{self.steps} " + " ".join(f"{k} {v}" for k, v in figures.items()))

    def note(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def advance(self) -> None:
        if self.enabled:
            self.bar.update(1)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()
            self.file.close()
