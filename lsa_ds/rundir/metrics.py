"""Rank 0's metrics sinks: metrics.jsonl (one JSON object per row), TensorBoard scalars, a
progress bar with ETA. Other ranks get a MetricsLog that does nothing.

The bar shows the parts of the loss separately (CE, misalignment when the regularizer is on) and
tokens/s. When stderr is not a terminal (a log file, CI) the bar would be carriage-return noise, so
the same figures go out as plain lines, at most one per PLAIN_EVERY_S seconds (and the last step).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

PLAIN_EVERY_S = 10.0


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
    def __init__(self, run_dir: Path, steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        # deferred: TensorBoard only on rank 0, which writes the logs
        from torch.utils.tensorboard import SummaryWriter

        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)  # line-buffered: a kill loses no row
        self.tb = SummaryWriter(str(run_dir / "tb"))
        self.steps, self.tty, self.last_plain = steps, sys.stderr.isatty(), 0.0
        self.bar = tqdm(total=steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0,
                        disable=not self.tty)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        prefix = "eval/" if row.get("kind") == "eval" else "train/"
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                self.tb.add_scalar(prefix + k, v, row["step"])
        if row.get("kind") == "eval":
            self.note(f"eval step {row['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("loss@", "misalign"))))
        elif "loss" in row:
            figures = {"loss": f"{row['loss']:.4f}", "ce": f"{row['ce']:.4f}"}
            if row.get("misalign") is not None:
                figures["misalign"] = f"{row['misalign']:.4f}"
            figures.update({"tok/s": f"{row['tokens_per_s']:.0f}", "lr": f"{row['lr']:.2e}"})
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
            self.tb.close()
            self.file.close()
