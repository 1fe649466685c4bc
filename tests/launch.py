"""Helpers for tests that start real DeepSpeed ranks through `lsa train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def lsa(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run the `lsa` CLI in a subprocess (as a user would), capturing its output."""
    proc = subprocess.run([sys.executable, "-m", "lsa_ds.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **ENV})
    if check and proc.returncode != 0:
        raise AssertionError(f"lsa {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") != "eval"], [r for r in rows if r.get("kind") == "eval"]
