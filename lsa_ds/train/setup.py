"""Before any rank starts: check the recipe, prepare its data, and write the run directory.

Three steps, each named for what it does:

1. `check_without_data` refuses everything that can be refused without the data (the DeepSpeed
   config, the step budget, paths, the model config); it writes nothing, and `--dry-run` is
   exactly this step.
2. `prepare_data` tokenizes the sources into the token cache when it is missing (the one step
   that writes outside the run directory), then `check_with_data` checks what needs the data:
   the tokenizer's vocabulary against the model, held-out windows for the evaluation.
3. `setup_run_dir` refuses an existing run unless `--overwrite` or `--resume` (`lsa_ds.train.resume`
   checks a resume and records the recipe changes it allows), then writes config.yaml and
   ds_config.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from lsa_ds.data import TokenCache, open_cache, prepare
from lsa_ds.data.sources import source_fingerprint
from lsa_ds.data.tokenizer import hf_tokenizer_dir
from lsa_ds.errors import UserError
from lsa_ds.eval.heldout import cache_windows
from lsa_ds.model.adapters import check_adapters
from lsa_ds.model.config import build_hf_config
from lsa_ds.recipe import Recipe, recipe_to_dict
from lsa_ds.recipe.ds_config import resolve_ds_config
from lsa_ds.rundir.metrics import check_reporters
from lsa_ds.train import checkpoint, sequence_parallel
from lsa_ds.train.evaluation import eval_lengths
from lsa_ds.train.resume import prepare_resume, record_changes


def check_without_data(recipe: Recipe, world: int) -> dict:
    """Everything that can be refused without the data: the DeepSpeed config, the step budget, the
    sources' and tokenizer's paths, the reporters' packages, the model config (architecture, checkpoint folder, RoPE,
    attention, adapters). Writes nothing. Returns the resolved DeepSpeed config."""
    ds_config = resolve_ds_config(recipe, world)
    if recipe.train.max_steps is None and recipe.train.token_budget is None:
        raise UserError("train.max_steps or train.token_budget must be set")
    check_reporters(recipe.run.report_to)
    for src in recipe.data.sources:
        source_fingerprint(src)  # lists the files: a path matching nothing is refused here
    tok = recipe.data.tokenizer
    if tok.path:  # an hf tokenizer may be a hub name: found in the local Hugging Face cache or refused here
        found = hf_tokenizer_dir(tok.path) if tok.type == "hf" else Path(tok.path).expanduser()
        if not found.exists():
            raise UserError(f"data.tokenizer.path: '{tok.path}' not found")
    hf_config = build_hf_config(recipe, None, None, None, None)  # vocabulary unknown yet: check_with_data
    check_adapters(recipe, hf_config)
    sequence_parallel.check(recipe, hf_config)
    return ds_config


def prepare_data(recipe: Recipe, progress: bool = True) -> TokenCache:
    """The recipe's token cache, tokenized first when missing (shards written atomically)."""
    prepare(recipe.data, progress=progress)
    return open_cache(recipe.data)


def check_with_data(recipe: Recipe, cache: TokenCache) -> None:
    """What needs the data: the model config with the tokenizer's vocabulary, and held-out windows
    long enough for the evaluation (which must not fail at its first step, after training began)."""
    tok = cache.tokenizer
    build_hf_config(recipe, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)
    longest = max(eval_lengths(recipe))
    try:
        cache_windows(recipe, cache, longest + 1, 1)
    except UserError as e:
        raise UserError(f"eval.lengths: held-out windows of {longest + 1} tokens are not available ({e})") from None


def _trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics rows past the resume point: those steps are trained (and logged) again."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in keep))


def setup_run_dir(recipe: Recipe, world: int, overwrite: bool, resume: bool = False,
                  allow_change: list[str] = (), resume_from: int | None = None) -> tuple[dict, str | None]:
    """Refuse an existing run unless --overwrite or --resume (with the recipe changes it allows);
    check everything, prepare the data; write config.yaml and ds_config.json. Returns (DeepSpeed
    config, checkpoint tag to resume from)."""
    run_dir = recipe.run_dir
    tag, changes = None, []
    if resume:
        tag, changes = prepare_resume(recipe, world, allow_change, resume_from)
    elif run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise UserError(f"run directory {run_dir} already exists; pass --resume to continue it, --overwrite to "
                        f"replace it, or pick another run.name")
    ds_config = check_without_data(recipe, world)
    check_with_data(recipe, prepare_data(recipe))
    if tag and tag.endswith("-universal"):
        ds_config["checkpoint"] = {"load_universal": True}
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    if resume:
        step = checkpoint.read_client(run_dir / "checkpoints", tag.removesuffix("-universal"))["step"] if tag else 0
        if tag is None:
            print(f"{run_dir} has no complete checkpoint yet: training starts again from step 0")
        _trim_metrics(run_dir, step)
        record_changes(run_dir, step, changes, list(allow_change))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
    return ds_config, tag
