"""Helpers for tests that start real DeepSpeed ranks through `lsa train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline"}


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


def per_step(run: Path) -> dict[int, tuple[float, list]]:
    train, _ = metrics(run)
    steps = [r["step"] for r in train]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {r["step"]: (r["loss"], r["sample_ids"]) for r in train}


def start(recipe: Path, args: list[str], extra_env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lsa_ds.cli", "train", str(recipe), *args, "--nproc", "2"],
                            env={**os.environ, **ENV, **(extra_env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `lsa train` and everything under it (the runner has a session of its own), as when a
    node dies."""
    import psutil

    for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.jsonl").is_file() and any(json.loads(line).get("step", 0) >= step
                                                     for line in (run / "metrics.jsonl").read_text().splitlines()):
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"step {step} never logged")


def wandb_history(run_dir: Path) -> list[dict]:
    """The rows a run logged to Weights & Biases offline, read back from its `.wandb` transaction
    log (wandb 0.31 ships no Python reader for it): a 7-byte header, then LevelDB-log records in
    32 KiB blocks — 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last) — each
    record a `wandb_internal_pb2.Record`; history records carry the logged scalars."""
    import struct

    from wandb.proto import wandb_internal_pb2

    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data, block, rows, pos, parts = log.read_bytes(), 32768, [], 7, b""
    assert data[:4] == b":W&B", data[:7]
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows
