"""What `lsa eval` evaluates: a run directory or any Hugging Face causal-LM folder (local, or a hub
name's snapshot in the local Hugging Face cache: `lsa_ds.data.hub`).

A *run* (`runs/<name>/` with config.yaml and an hf/ export, or that hf/ folder itself) brings its
training length (train.seq_len), its held-out data (the recipe's token cache), its final training
loss (metrics.jsonl) and a default output folder (runs/<name>/eval). A plain *model* folder needs
config.json, weights and a tokenizer; its training length is --length or its
max_position_embeddings. A PEFT adapter folder (adapter_config.json: a run's adapter/, `lsa export
--adapter-only`) is a model folder too: its base is loaded, the adapters merged into it.

Tokenizer: an lsa-ds export's own SentencePiece `tokenizer.model` (framing from lsa_tokenizer.json:
token for token what the run's cache holds), else AutoTokenizer when the folder has files it reads
(tokenizer.json or tokenizer_config.json), else a bare `tokenizer.model`.

Held-out data: a run's token cache; for a folder, the data its export recorded (lsa_data.json),
else the builtin stdlib corpus (lsa_ds.eval.heldout).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lsa_ds.data import hub
from lsa_ds.data.tokenizer import SPM_FILE, Tokenizer, load_sentencepiece
from lsa_ds.errors import UserError
from lsa_ds.model.adapters import ADAPTER_DIR, adapter_base, load_adapter_folder
from lsa_ds.recipe import Recipe, load_recipe
from lsa_ds.recipe.schema import DataConfig
from lsa_ds.rundir.curves import final_train_loss
from lsa_ds.rundir.metrics import read_rows


@dataclass
class Target:
    """One model to evaluate and everything known about it before its weights are loaded."""

    name: str
    """Display name: the run's name or the folder's."""
    hf_dir: Path
    run_dir: Path | None
    recipe: Recipe | None
    train_len: int
    """L: the context the model was trained (or extended) to."""
    train_loss: float | None
    """Final training loss from metrics.jsonl (runs only)."""
    tokenizer: Tokenizer
    vocab_size: int
    data: DataConfig | None = None
    """For a folder: the data its export recorded (lsa_data.json), the default held-out data."""

    @property
    def kind(self) -> str:
        return "run" if self.run_dir is not None else "model"

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "path": str(self.run_dir or self.hf_dir),
                "train_len": self.train_len, "train_loss": self.train_loss,
                "tokenizer": {"kind": self.tokenizer.kind, "fingerprint": self.tokenizer.fingerprint,
                              "vocab_size": self.tokenizer.vocab_size}}


def _our_export(folder: Path) -> bool:
    """An lsa-ds export with its original SentencePiece model (lsa_tokenizer.json says so)."""
    described = folder / "lsa_tokenizer.json"
    if not (described.is_file() and (folder / SPM_FILE).is_file()):
        return False
    try:
        return json.loads(described.read_text()).get("kind") == "sentencepiece"
    except (json.JSONDecodeError, AttributeError):
        return False


def load_tokenizer(folder: Path) -> Tokenizer:
    """The folder's tokenizer, wrapped in our `Tokenizer` (see the module docstring)."""
    hf_files = (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    if hf_files and not _our_export(folder):
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # AutoTokenizer raises many types for a broken folder
            why = " ".join(str(e).split())[:200]
            raise UserError(f"{folder}: cannot load its tokenizer ({type(e).__name__}: {why})") from None
        tok.model_max_length = 1 << 62  # we feed long inputs on purpose; no "longer than max length" warnings
        h = hashlib.sha256()
        for f in sorted(p for p in folder.iterdir() if p.is_file() and "token" in p.name):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        has = lambda i: i is not None and i >= 0  # noqa: E731
        return Tokenizer("hf", tok, folder, h.hexdigest()[:16],
                         add_bos=has(tok.bos_token_id), add_eos=has(tok.eos_token_id))
    spm_path = folder / SPM_FILE
    if spm_path.is_file():
        described = folder / "lsa_tokenizer.json"  # an export's framing; else the model's own BOS/EOS
        info = json.loads(described.read_text()) if described.is_file() else {}
        return load_sentencepiece(spm_path, info.get("add_bos"), info.get("add_eos"))
    raise UserError(f"{folder}: no tokenizer (expected tokenizer.json / tokenizer_config.json, or {SPM_FILE})")


def _final_train_loss(run_dir: Path) -> float | None:
    """The run's smoothed final training loss (`lsa_ds.rundir.curves.final_train_loss`)."""

    path = run_dir / "metrics.jsonl"
    return final_train_loss(read_rows(path)) if path.is_file() else None


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def _config_dir(folder: Path) -> Path:
    """Where the model's config.json is: the folder, or for adapters without one, their base."""
    if _is_adapter(folder) and not (folder / "config.json").is_file():
        return adapter_base(folder)
    return folder


def _check_hf_folder(folder: Path, shown: str) -> None:
    if _is_adapter(folder):
        if not (folder / "adapter_model.safetensors").is_file():
            raise UserError(f"{shown}: adapter folder without adapter_model.safetensors")
        base = adapter_base(folder)
        if not (base / "config.json").is_file():
            raise UserError(f"{shown}: the adapters' base model {str(base)!r} (adapter_config.json) is not a local model folder")
        return
    if not (folder / "config.json").is_file():
        raise UserError(f"{shown}: not a Hugging Face model folder (no config.json) "
                        "and not a run directory (no config.yaml)")
    if not any((folder / w).is_file() for w in hub.MODEL_WEIGHTS):
        raise UserError(f"{shown}: no model weights ({' / '.join(hub.MODEL_WEIGHTS[::2])})")


def resolve(path: str, length: int | None = None) -> Target:
    """The target at `path`, or UserError in one line. `length` sets L for plain model folders."""
    p = Path(path)
    if not p.exists() and hub.is_hub_name(path):  # a hub name: its snapshot in the local Hugging Face cache
        p = hub.resolve(path, "MODEL_OR_RUN", expect=hub.MODEL_WEIGHTS)
    if not p.exists():
        raise UserError(f"{path}: no such run or model folder")
    if not p.is_dir():
        raise UserError(f"{path}: not a folder (expected a run directory or a Hugging Face model folder)")
    run_dir = None
    if (p / "config.yaml").is_file():
        run_dir = p
    elif p.name in ("hf", ADAPTER_DIR) and (p.parent / "config.yaml").is_file():  # a run's export given directly
        run_dir = p.parent
    if run_dir is not None:
        hf = p if p.name == ADAPTER_DIR else run_dir / "hf"  # the adapters score as their merged hf/ does
        if not (hf / "config.json").is_file():
            raise UserError(f"{run_dir}: run has no hf/ export yet (did training finish?)")
        _check_hf_folder(hf, str(hf))
        recipe = load_recipe(run_dir / "config.yaml")
        tok = load_tokenizer(hf)
        L = recipe.train.seq_len
        name, loss = run_dir.name, _final_train_loss(run_dir)
    else:
        hf, recipe, loss = p, None, None
        _check_hf_folder(hf, path)
        tok = load_tokenizer(hf)
        name = p.resolve().name if Path(path).exists() else path.rpartition("/")[2]  # a hub name's, not its commit's

    try:
        cfg = AutoConfig.from_pretrained(str(_config_dir(hf)), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{hf}/config.json: cannot load ({' '.join(str(e).split())[:200]})") from None
    if run_dir is None:
        L = length or int(getattr(cfg, "max_position_embeddings", 0) or 0)
        if L < 2:
            raise UserError(f"{path}: config.json has no max_position_embeddings; pass --length (the training length)")
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    if vocab and tok.vocab_size > vocab:
        raise UserError(f"{path}: tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {vocab}")
    return Target(name, hf, run_dir, recipe, L, loss, tok, vocab, _recorded_data(hf) if run_dir is None else None)


def _recorded_data(folder: Path) -> DataConfig | None:
    path = folder / "lsa_data.json"
    if not path.is_file():
        return None
    try:
        return DataConfig.model_validate_json(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not a data config this version reads ({' '.join(str(e).split())[:160]}); "
                        f"pass --data RECIPE") from None


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: auto is fp32 on CPU and bf16 on a GPU that has it."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(target: Target, device: torch.device, dtype: torch.dtype, attn: str = "sdpa") -> torch.nn.Module:
    """The target's weights as an eval-mode causal LM on `device`."""


    try:
        if _is_adapter(target.hf_dir):  # merged once: evaluation then runs a plain model
            model = load_adapter_folder(target.hf_dir, dtype, attn).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(target.hf_dir), dtype=dtype, attn_implementation=attn,
                                                         local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        why = " ".join(str(e).split())[:200]
        raise UserError(f"{target.hf_dir}: cannot load the model ({type(e).__name__}: {why})") from None
    return model.to(device).eval()
