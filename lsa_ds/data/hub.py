"""Hugging Face hub names where a recipe (or `lsa eval`) names a model, a tokenizer or a dataset,
resolved to a folder of the local Hugging Face cache, never over the network.

Why: on a cluster, models and datasets live in one shared cache (`HF_HOME` / `HF_HUB_CACHE`,
filled by `hf download` on a machine with internet) and the compute nodes are often offline; a
recipe that says `model.path: meta-llama/Llama-2-7b-hf` should run there as written. Every key
that takes a name resolves it here, so they agree on what is a path and what is a name, and say
the same one line when a name is missing.

The rules:
- an existing local file or folder always wins (an existing folder is a folder);
- a string that is clearly a path (starts with '/', '.', '~', has more than one '/', a backslash
  or a glob character, or is no valid repo id) stays a path: the caller reports it missing as it
  always did;
- anything else (`owner/name` or `name`, optionally `@revision`) is looked up with
  `huggingface_hub.snapshot_download(local_files_only=True)` in the cache the usual environment
  variables select (`HF_HUB_CACHE`, else `HF_HOME`/hub, else ~/.cache/huggingface/hub), and is
  the snapshot folder there: the files the repository had at that revision, as symlinks to blobs.
"""

from __future__ import annotations

import os
from pathlib import Path

from lsa_ds.errors import UserError

MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json")
"""Any one of these makes a cached model snapshot complete enough to load."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
"""Any one of these makes a cached snapshot hold a tokenizer."""


def looks_like_path(name: str) -> bool:
    """True for a string no one would mean as a hub id: it is a path whatever the cache holds."""
    return (name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
            or any(c in name for c in "*?[") or not _valid_repo_id(name.partition("@")[0]))


def _valid_repo_id(repo_id: str) -> bool:
    # deferred: huggingface_hub only once a string may be a hub name (local paths never need it)
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def cache_dir() -> Path:
    """The hub cache huggingface_hub searches (HF_HUB_CACHE, HF_HOME/hub, or the default)."""
    # deferred: as above
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_hub_name(name: str) -> bool:
    """True when `name` is no local file or folder and could be a hub id: `resolve` looks it up."""
    return not Path(os.path.expanduser(name)).exists() and not looks_like_path(name)


def download_command(name: str, repo_type: str = "model") -> str:
    """The command that puts `name` (`repo@revision` allowed) into the cache, on a machine with internet."""
    repo_id, _, revision = name.partition("@")
    kind = " --repo-type dataset" if repo_type == "dataset" else ""
    rev = f" --revision {revision}" if revision else ""
    return f"hf download {repo_id}{kind}{rev}"


def resolve(name: str, key: str, repo_type: str = "model", expect: tuple[str, ...] = ()) -> Path:
    """The local folder or file `name` means: itself when it is a path (existing or not: the
    caller reports a missing one), else the cached snapshot of the hub repository of that name.
    `key` names the recipe key in errors; `expect`: files of which the snapshot must hold one
    (a partial download, such as the config.json alone that AutoConfig fetched, is refused here
    rather than on every rank). An uncached name is a UserError of one line."""
    local = Path(os.path.expanduser(name))
    if not is_hub_name(name):
        return local
    # deferred: as above
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = name.partition("@")
    at = f" at revision {revision!r}" if revision else ""
    advice = (f"on a machine with internet, with HF_HOME (or HF_HUB_CACHE) pointing at this shared cache, "
              f"run `{download_command(name, repo_type)}` (or `huggingface-cli download ...`)")
    try:
        folder = Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision or None,
                                        local_files_only=True))
    except LocalEntryNotFoundError:
        raise UserError(f"{key}={name!r}: no local folder of that name, and the Hugging Face cache {cache_dir()} has no "
                        f"{repo_type} {repo_id!r}{at} (lsa-ds reads the cache, never the network); {advice}") from None
    if expect and not any((folder / f).is_file() for f in expect):
        raise UserError(f"{key}={name!r}: the cached snapshot {folder} has none of {', '.join(expect)} "
                        f"(a partial download?); {advice}")
    return folder
