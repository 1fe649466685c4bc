"""Checkpoints that survive anything: save with client state, atomic `latest`, retention, resume.

Layout under `runs/<name>/checkpoints/`:
    step00000040/            DeepSpeed's files (engine, optimizer shards) for that step
        client.json          step, consumed samples, world size, recipe fingerprint (rank 0)
        rng-rank<R>.json     python / numpy / torch RNG of rank R
        COMPLETE             written after every rank's files are flushed: the checkpoint is usable
    latest                   the newest complete tag (temp file, fsync, rename)

DeepSpeed saves neither RNG nor data position and writes its own `latest` before every rank has
finished; we pass save_latest=False and keep both ourselves. Everything we write is JSON: nothing
we read back is unpickled unless DeepSpeed wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lsa_ds.errors import UserError
from lsa_ds.model.adapters import uses_adapters
from lsa_ds.recipe import Recipe, recipe_changes, recipe_to_dict

COMPLETE = "COMPLETE"
LATEST = "latest"
KILL_IN_SAVE_HOOK = "LSA_TEST_KILL_IN_SAVE"
"""Test hook: rank 0 SIGKILLs itself while saving this step, after DeepSpeed wrote its files."""

# Recipe keys whose change makes a checkpoint meaningless for this run (model shape, length,
# data and tokenizer, the window/shift geometry, precision of the saved states).
RESUME_CRITICAL = ("model", "data.sources", "data.tokenizer", "data.min_doc_tokens", "data.long_doc_tokens",
                   "data.long_doc_repeat", "data.token_dtype", "train.seq_len", "train.seed", "train.precision",
                   "align.shift_min", "align.shift_max", "align.enabled")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
    return tree


def recipe_fingerprint(recipe: Recipe | dict) -> str:
    tree = recipe_to_dict(recipe) if isinstance(recipe, Recipe) else recipe
    blob = json.dumps({k: _lookup(tree, k) for k in RESUME_CRITICAL}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resume_conflict(saved: dict, new: Recipe) -> str | None:
    """The first resume-critical key that differs, described in one line; None when compatible."""
    changes = recipe_changes(saved, new, RESUME_CRITICAL)
    return f"{changes[0].key} changed ({json.dumps(changes[0].old, default=str)} -> " \
           f"{json.dumps(changes[0].new, default=str)})" if changes else None


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file of a checkpoint folder. Other ranks write into it meanwhile: their
    temporaries (`.name.tmp-PID`, fsynced by their writer before the rename) are skipped, and a
    file renamed away between listing and opening is fine (seen: rank 1 listed rank 0's
    `.rng-rank0.json.tmp-*` just before it became `rng-rank0.json`, and the save died)."""
    for p in folder.rglob("*"):
        if p.name.startswith(".") or not p.is_file():
            continue
        try:
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        except FileNotFoundError:
            continue


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state().tolist()}


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Complete checkpoint tags, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir()
                  if p.is_dir() and (p / COMPLETE).is_file() and p.name.startswith("step") and "-" not in p.name)


def newest_complete(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint. Normally what `latest` names; a kill between writing
    COMPLETE and `latest` leaves `latest` one behind, and the newer complete one is just as safe."""
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def save(engine, run_dir: Path, recipe: Recipe, step: int, consumed_samples: int, extra: dict | None = None) -> str:
    """Collective: every rank calls it. Returns the tag."""
    ckpt_dir = run_dir / "checkpoints"
    tag = tag_for(step)
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and (ckpt_dir / tag).exists():
        shutil.rmtree(ckpt_dir / tag)  # an unfinished save of the same step from before a crash
    dist.barrier()
    # With adapters only what trains is saved: the frozen base comes back from model.path/init_from.
    engine.ds.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False, exclude_frozen_parameters=uses_adapters(recipe))
    folder = ckpt_dir / tag
    _fsync_write(folder / f"rng-rank{rank}.json", json.dumps(rng_state()))
    if rank == 0:
        client = {"step": step, "consumed_samples": consumed_samples, "world_size": world,
                  "recipe_fingerprint": recipe_fingerprint(recipe), **(extra or {})}
        _fsync_write(folder / "client.json", json.dumps(client, indent=2))
    _fsync_tree(folder)
    if rank == 0 and os.environ.get(KILL_IN_SAVE_HOOK) == str(step):
        os.kill(os.getpid(), 9)
    dist.barrier()  # every rank's files are on disk before the checkpoint is declared complete
    if rank == 0:
        _fsync_write(folder / COMPLETE, "")
        _fsync_write(ckpt_dir / LATEST, tag)
        prune(ckpt_dir, recipe.checkpoint.keep_last)
    dist.barrier()
    return tag


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints; drop older ones and stale incomplete ones."""
    tags = complete_tags(ckpt_dir)
    keep = set(tags[-keep_last:])
    newest = tags[-1] if tags else None
    for p in ckpt_dir.iterdir():
        if not p.is_dir() or p.name in keep:
            continue
        stale_incomplete = not (p / COMPLETE).is_file() and newest is not None and p.name < newest
        if p.name in tags or stale_incomplete:
            shutil.rmtree(p, ignore_errors=True)


def read_client(ckpt_dir: Path, tag: str) -> dict:
    return json.loads((ckpt_dir / tag / "client.json").read_text())


def load(engine, ckpt_dir: Path, tag: str, universal: bool) -> dict:
    """Collective: restore engine, optimizer, scheduler and this rank's RNG; returns client state."""
    path, _ = engine.ds.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True,
                                        load_module_strict=not uses_adapters(engine.recipe))
    if path is None:
        raise UserError(f"{ckpt_dir / tag}: DeepSpeed could not load this checkpoint")
    if universal:
        engine.restore_group_hyperparameters()
    client = read_client(ckpt_dir, tag.removesuffix("-universal"))
    rng = ckpt_dir / tag.removesuffix("-universal") / f"rng-rank{dist.get_rank()}.json"
    if not universal and rng.is_file():  # on another world size, ranks have no saved stream of their own
        set_rng_state(json.loads(rng.read_text()))
    return client


def to_universal(ckpt_dir: Path, tag: str) -> str:
    """Convert a checkpoint to DeepSpeed's universal format (for a different world size); returns
    the universal tag. Done once, before the ranks start."""

    out = ckpt_dir / f"{tag}-universal"
    if (out / COMPLETE).is_file():
        return out.name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt_dir / tag),
           "--output_folder", str(out), "--num_extract_workers", "1", "--num_merge_workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{ckpt_dir / tag}: conversion to a universal checkpoint failed: {proc.stderr.strip().splitlines()[-1:]}")
    _fsync_write(out / COMPLETE, "")
    return out.name
