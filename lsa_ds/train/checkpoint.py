"""Checkpoints that survive anything: save with client state, atomic `latest`, retention, resume.

Layout under `runs/<name>/checkpoints/`:
    step00000040/            DeepSpeed's files (engine, optimizer shards) for that step
        client.json          step, consumed samples, world size, recipe fingerprint (rank 0)
        rng-rank<R>.json     python / numpy / torch RNG of rank R
        manifest.json        size and sha256 of every file above (hashed by the ranks in parallel)
        COMPLETE             written after every rank's files are flushed: the checkpoint is usable
    latest                   the newest complete tag (temp file, fsync, rename)

A save that cannot write (a full disk, a quota) stops the run on every rank with one line: the
unfinished folder is removed and the previous complete checkpoint stays as it was. `--resume` and
`lsa export` verify a checkpoint against its manifest first and refuse a corrupt or truncated one,
naming the file and the previous complete checkpoint.

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
from lsa_ds.recipe import Recipe, recipe_to_dict

COMPLETE = "COMPLETE"
MANIFEST = "manifest.json"
LATEST = "latest"
KILL_IN_SAVE_HOOK = "LSA_TEST_KILL_IN_SAVE"
"""Test hook: rank 0 SIGKILLs itself while saving this step, after DeepSpeed wrote its files."""

RESUME_CRITICAL = ("model", "data.sources", "data.tokenizer", "data.min_doc_tokens", "data.long_doc_tokens",
                    "data.long_doc_repeat", "data.token_dtype", "train.seq_len", "train.seed", "train.precision",
                    "align.shift_min", "align.shift_max", "align.enabled")
"""Recipe keys whose change makes a checkpoint meaningless for the run (model shape, data and
tokenizer, window and shift geometry, the precision of the saved states): `--resume` refuses to
change them (`lsa_ds.train.resume`), and client.json's recipe fingerprint hashes them."""


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


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (raised on every rank; rank 0 says it)."""


def save(engine, run_dir: Path, recipe: Recipe, step: int, consumed_samples: int, extra: dict | None = None) -> str:
    """Collective: every rank calls it. Returns the tag."""
    ckpt_dir = run_dir / "checkpoints"
    tag = tag_for(step)
    folder = ckpt_dir / tag
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and folder.exists():
        shutil.rmtree(folder)  # an unfinished save of the same step from before a crash
    dist.barrier()
    error = None
    try:
        # With adapters only what trains is saved: the frozen base comes back from model.path/init_from.
        engine.ds.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False,
                                  exclude_frozen_parameters=uses_adapters(recipe))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError of its zip writer
        if isinstance(e, dist.DistBackendError):
            raise  # a lost peer, not a write
        error = e
        dist.barrier()  # the one DeepSpeed's save ends with, where ranks that wrote their part wait
    if error is None:
        try:
            _fsync_write(folder / f"rng-rank{rank}.json", json.dumps(rng_state()))
            if rank == 0:
                client = {"step": step, "consumed_samples": consumed_samples, "world_size": world,
                          "recipe_fingerprint": recipe_fingerprint(recipe), **(extra or {})}
                _fsync_write(folder / "client.json", json.dumps(client, indent=2))
            _fsync_tree(folder)
        except OSError as e:
            error = e
    _agree_written(error, folder)
    if rank == 0 and os.environ.get(KILL_IN_SAVE_HOOK) == str(step):
        os.kill(os.getpid(), 9)
    dist.barrier()  # every rank's files are on disk before they are hashed and declared complete
    error = None
    try:
        _write_manifest(folder)
    except OSError as e:
        error = e
    _agree_written(error, folder)
    if rank == 0:
        _fsync_write(folder / COMPLETE, "")
        _fsync_write(ckpt_dir / LATEST, tag)
        prune(ckpt_dir, recipe.checkpoint.keep_last)
    dist.barrier()
    return tag


def _write_failure(error: Exception, folder: Path) -> str:
    """Why a write failed, in a few words: the OS error, or (torch.save's zip writer turns ENOSPC
    into a RuntimeError) the filesystem's free space when it is all but gone."""
    if isinstance(error, OSError):
        return f"{error.strerror or error}: {error.filename or folder}"
    usage = shutil.disk_usage(folder.parent)
    if usage.free < min(64 << 20, usage.total // 100):
        return f"No space left on device: {usage.free} bytes free on the filesystem of {folder.parent}"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} (writing {folder})"


def _agree_written(error: Exception | None, folder: Path) -> None:
    """Collective: go on when every rank wrote its part; otherwise remove the unfinished folder and
    raise CheckpointWriteError on every rank, with the first failing rank's reason."""
    reasons = [None] * dist.get_world_size()
    dist.all_gather_object(reasons, None if error is None else _write_failure(error, folder))
    failed = [(r, why) for r, why in enumerate(reasons) if why]
    if not failed:
        return
    if dist.get_rank() == 0:
        shutil.rmtree(folder, ignore_errors=True)  # unfinished: free what it took
    dist.barrier()
    previous = newest_complete(folder.parent)
    rank, why = failed[0]
    raise CheckpointWriteError(
        f"checkpoint {folder.name} could not be written (rank {rank}: {why}); "
        + (f"{folder.parent / previous} is complete: free space, then continue from it with --resume"
           if previous else "there is no earlier complete checkpoint"))


def _write_manifest(folder: Path) -> None:
    """Collective: the ranks hash the folder's files in parallel (every k-th file each) and rank 0
    writes manifest.json: {name: {bytes, sha256}}."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name not in (COMPLETE, MANIFEST))
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {name: _digest(folder / name) for name in names[rank::world]}
    parts = [None] * world
    dist.all_gather_object(parts, mine)
    if rank == 0:
        files = {name: part[name] for part in parts for name in part}
        _fsync_write(folder / MANIFEST, json.dumps({"algorithm": "sha256", "files": dict(sorted(files.items()))},
                                                   indent=1))


def _digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def verify(ckpt_dir: Path, tag: str) -> None:
    """Refuse a checkpoint whose files do not match its manifest (missing, truncated, corrupt), in
    one line naming the file and the previous complete checkpoint. Checkpoints written before
    manifests existed are accepted as they are."""
    folder = ckpt_dir / tag
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        bad, why = manifest, "unreadable"
    else:
        bad = why = None
        for name, want in files.items():
            path = folder / name
            if not path.is_file():
                bad, why = path, "missing"
            elif path.stat().st_size != want["bytes"]:
                bad, why = path, f"{path.stat().st_size} bytes, {want['bytes']} written (truncated?)"
            elif _digest(path)["sha256"] != want["sha256"]:
                bad, why = path, "checksum differs from the manifest (corrupt)"
            if bad:
                break
    if bad is None:
        return
    older = [t for t in complete_tags(ckpt_dir) if t < tag]
    n = int(older[-1].removeprefix("step")) if older else None
    offer = (f"the previous complete checkpoint is {older[-1]} (`lsa train ... --resume --resume-from {n}`, "
             f"`lsa export RUN --step {n}`)" if older else "there is no earlier complete checkpoint")
    raise UserError(f"{bad}: {why}; checkpoint {tag} cannot be used; {offer}")


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
