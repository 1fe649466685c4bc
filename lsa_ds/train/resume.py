"""`lsa train --resume`: which checkpoint to continue from, and whether this recipe may continue it.

A run directory says what produced its numbers. Resuming compares the recipe given now with the
run's config.yaml, key by key (`lsa_ds.recipe.recipe_changes`):

- `IMMUTABLE` keys (the model, the data and tokenizer, L, the seed, precision, the window and
  shift geometry) make the checkpoint meaningless for the new recipe: refused, start a new run.
- `FREE` keys change only how the run is watched or stored (logging, checkpoint and evaluation
  cadence, retention, timeouts, tokenizer threads, the run's name and folder when a run directory
  was copied or moved): accepted.
- `LAYOUT` keys (micro-batch, gradient accumulation, sequence parallelism) say how a step's windows
  are spread over ranks: accepted when the global batch (micro_batch_size · grad_accum · ranks /
  sequence_parallel) equals the checkpoint's, so the step computes the same mean over the same
  windows (elastic resume); otherwise they change the run and need `--allow-change`.
- Every other change alters what the run computes from here on (alpha, lr, the schedule's length
  through train.max_steps, ...): refused with one line listing every changed key, old -> new,
  unless the user names it with `--allow-change KEY`.

Accepted changes are printed and appended to `config-history.jsonl` (the step they take effect
at, old and new values); config.yaml then holds the recipe in force.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from lsa_ds.errors import UserError
from lsa_ds.recipe import Change, Recipe, recipe_changes
from lsa_ds.recipe.checks import schema_problem
from lsa_ds.train import checkpoint

IMMUTABLE = checkpoint.RESUME_CRITICAL

FREE = ("run.log_every", "checkpoint.every_steps", "checkpoint.keep_last", "eval.every_steps",
        "train.dist_timeout_s", "train.max_skipped_steps", "data.threads", "data.batch_docs",
        "run.name", "run.output_dir", "run.report_to", "run.peak_tflops")
"""Keys that change how the run is watched or stored, never what it computes."""

LAYOUT = ("train.micro_batch_size", "train.grad_accum", "train.sequence_parallel")
"""Keys that spread a step over ranks: free while the global batch stays the checkpoint's."""

HISTORY = "config-history.jsonl"


def _covers(keys, key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def global_batch(train: dict, world: int) -> int:
    """Windows per optimizer step: micro-batch · accumulation · data-parallel ranks."""
    return train["micro_batch_size"] * train["grad_accum"] * (world // train.get("sequence_parallel", 1))


def check_recipe_changes(run_dir: Path, recipe: Recipe, allowed: list[str], world: int | None = None,
                         saved_world: int | None = None) -> list[Change]:
    """The changes of `recipe` (launched on `world` ranks) against the run's config.yaml (whose
    checkpoint was saved by `saved_world` ranks) that resuming accepts (FREE ones, LAYOUT ones that
    keep the global batch, those `allowed` names); a UserError naming every other change. Reads only."""
    for key in allowed:
        problem = schema_problem(key)
        if problem:
            raise UserError(f"--allow-change {key}: {problem}")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    changes = recipe_changes(saved, recipe)
    frozen = [c for c in changes if _covers(IMMUTABLE, c.key)]
    if frozen:
        raise UserError(f"cannot resume {run_dir}: {'; '.join(map(str, frozen))} (a run's model, data, length, seed, "
                        f"precision and window geometry are fixed: its checkpoints fit no other); start a new run instead")
    free, batch = list(FREE), ""
    if saved_world is not None:
        old, new = global_batch(saved["train"], saved_world), global_batch(recipe.train.model_dump(), world)
        if old == new:
            free += LAYOUT
        else:
            batch = f" (the global batch becomes {new} windows per step, was {old} on {saved_world} ranks)"
    refused = [c for c in changes if not _covers(free, c.key) and not _covers(allowed, c.key)]
    if refused:
        flags = " ".join(f"--allow-change {c.key}" for c in refused)
        said = batch if any(_covers(LAYOUT, c.key) for c in refused) else ""
        raise UserError(f"cannot resume {run_dir}: the recipe differs from the run's config.yaml in "
                        f"{'; '.join(map(str, refused))}{said}; to continue with the new values pass {flags} "
                        f"(the change is recorded in {HISTORY}), or start a new run")
    return changes


def record_changes(run_dir: Path, step: int, changes: list[Change], allowed: list[str]) -> None:
    """Append the accepted changes to config-history.jsonl and say them on the console."""
    if not changes:
        return
    row = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "allowed": allowed,
           "changes": [{"key": c.key, "old": c.old, "new": c.new} for c in changes]}
    with open(run_dir / HISTORY, "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
    print(f"resuming {run_dir} after step {step} with a changed recipe (recorded in {run_dir / HISTORY}): "
          + "; ".join(map(str, changes)))


def prepare_resume(recipe: Recipe, world: int, allowed: list[str] = (), resume_from: int | None = None,
                   ) -> tuple[str | None, list[Change]]:
    """Check that the run can be resumed with this recipe and that its checkpoint is intact; return
    the checkpoint tag to load (a universal one, converted here, when the number of ranks changed;
    None without a checkpoint) and the accepted recipe changes. `resume_from` picks an older
    complete checkpoint: the newer ones are then set aside as `<tag>-superseded` (kept, not used)."""
    run_dir = recipe.run_dir
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"cannot resume {run_dir}: no such run (no config.yaml); start it without --resume")
    ckpt_dir = run_dir / "checkpoints"
    tags = checkpoint.complete_tags(ckpt_dir)
    if resume_from is not None:
        tag = checkpoint.tag_for(resume_from)
        if tag not in tags:
            raise UserError(f"--resume-from {resume_from}: {run_dir} has no complete checkpoint of that step "
                            f"(have: {', '.join(tags) or 'none'})")
    else:
        tag = tags[-1] if tags else None
    if tag is not None:
        checkpoint.verify(ckpt_dir, tag)
    saved_world = checkpoint.read_client(ckpt_dir, tag)["world_size"] if tag else None
    changes = check_recipe_changes(run_dir, recipe, list(allowed), world, saved_world)
    if tag is None:
        return None, changes
    for newer in (t for t in tags if t > tag):
        (ckpt_dir / newer).rename(ckpt_dir / f"{newer}-superseded")
    if saved_world != world:
        tag = checkpoint.to_universal(ckpt_dir, tag)
    return tag, changes
