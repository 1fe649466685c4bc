"""HF export: consolidated weights as safetensors + config.json (effective RoPE) + tokenizer files.

Two ways in: at the end of training straight from the engine (ZeRO-3 shards gathered in memory),
and `lsa export RUN [--step N] --out DIR` from any saved checkpoint (DeepSpeed's zero_to_fp32).
Either way the folder is written under a temporary name and renamed when complete, and plain
`AutoModelForCausalLM.from_pretrained(DIR)` / `AutoTokenizer.from_pretrained(DIR)` load it.
A run that trained adapters exports them merged into the base weights; `--adapter-only` (and
`adapter/` at the end of training) is the PEFT folder instead (`lsa_ds.model.adapters`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, GenerationConfig
from transformers.utils import logging as hf_logging

from lsa_ds.cli_help import command_parser
from lsa_ds.data import open_cache
from lsa_ds.data.tokenizer import Tokenizer, to_hf_tokenizer
from lsa_ds.errors import UserError
from lsa_ds.model import adapters
from lsa_ds.model.config import build_hf_config, checkpoint_dir
from lsa_ds.recipe import load_recipe
from lsa_ds.train import checkpoint


def write_hf_folder(model, state_dict: dict[str, torch.Tensor], tok: Tokenizer, out: Path, data=None,
                    max_shard_size: str = "2GB") -> None:
    """Write weights (sharded past max_shard_size), config, generation defaults and tokenizer into
    `out`, atomically. The config is the one for inference: training runs without a KV cache
    (packed documents restart position ids), `generate` on the export wants one."""
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar for one file is noise in the run's log

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    use_cache, generation = model.config.use_cache, model.generation_config
    model.config.use_cache = True
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                                               pad_token_id=tok.pad_id if tok.pad_id is not None else tok.eos_id)
    try:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True, max_shard_size=max_shard_size)
    finally:  # the engine's model trains on (or is evaluated) without a cache
        model.config.use_cache, model.generation_config = use_cache, generation
    write_tokenizer_and_data(tok, tmp, model.config.max_position_embeddings, data)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


LOADER_KEYS = ("local_files_only", "cache_dir", "token", "use_auth_token", "_commit_hash", "revision",
               "trust_remote_code", "force_download")
"""from_pretrained arguments a tokenizer keeps in init_kwargs and save_pretrained writes back: they
say how this machine loaded it, not what the tokenizer is, and would follow the folder elsewhere."""


def _drop_local_keys(config: Path) -> None:
    if config.is_file():
        cfg = json.loads(config.read_text())
        kept = {k: v for k, v in cfg.items() if k not in LOADER_KEYS}
        if kept != cfg:
            config.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")


def write_tokenizer_and_data(tok: Tokenizer, folder: Path, max_length: int, data=None) -> None:
    """The tokenizer files every export carries (HF's, the original SentencePiece model, our
    framing) and the run's data config."""
    hf_tok = to_hf_tokenizer(tok)
    hf_tok.model_max_length = max_length
    hf_tok.save_pretrained(folder)
    _drop_local_keys(folder / "tokenizer_config.json")
    if tok.kind == "sentencepiece":
        shutil.copy(tok.path, folder / "tokenizer.model")  # the original, for tools that want SentencePiece
    (folder / "lsa_tokenizer.json").write_text(json.dumps(tok.describe(), indent=2))
    if data is not None:  # `lsa eval` of this folder, wherever it is copied, scores the run's held-out split
        (folder / "lsa_data.json").write_text(data.model_dump_json(indent=2))


def export_from_engine(engine, lm, hf_config, tok: Tokenizer, out: Path) -> None:
    """Collective: every rank takes part in gathering the weights; rank 0 writes (with adapters:
    the PEFT folder `adapter/` beside `out`, then `out` merged)."""
    state = engine.consolidated_state_dict()
    if dist.get_rank() == 0:
        recipe = engine.recipe
        if adapters.uses_adapters(recipe):
            model = adapters.adapted_from_state(recipe, hf_config, state)
            write_adapters(recipe, model, hf_config, tok, out.with_name(adapters.ADAPTER_DIR))
            write_hf_folder(_meta_model(hf_config), adapters.merged_state_dict(model), tok, out, recipe.data)
        else:
            write_hf_folder(lm, state, tok, out, recipe.data)
    dist.barrier()


def write_adapters(recipe, model, hf_config, tok: Tokenizer, out: Path) -> None:
    """The PEFT adapter folder of the adapted CPU `model`, with the run's tokenizer (so `lsa eval`
    of it needs nothing else)."""
    adapters.write_adapter_folder(recipe, model, hf_config, str(checkpoint_dir(recipe)), out,
                                  also=lambda tmp: write_tokenizer_and_data(tok, tmp, hf_config.max_position_embeddings,
                                                                            recipe.data))


def _meta_model(hf_config):
    """A weightless model of the architecture: what save_pretrained needs besides the state dict."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config)


def export_checkpoint(run_dir: Path, step: int | None, out: Path, adapter_only: bool = False) -> Path:
    """Turn a saved checkpoint's ZeRO shards into an HF folder (one process, no DeepSpeed launch)."""
    # deferred: importing DeepSpeed takes seconds, and the `lsa train` parent imports this module too
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    ckpt_dir = run_dir / "checkpoints"
    tags = checkpoint.complete_tags(ckpt_dir)
    if not tags:
        raise UserError(f"{run_dir}: no complete checkpoint to export")
    tag = checkpoint.tag_for(step) if step is not None else tags[-1]
    if tag not in tags:
        raise UserError(f"{run_dir}: no complete checkpoint for step {step} (have: {', '.join(tags)})")
    checkpoint.verify(ckpt_dir, tag)
    recipe = load_recipe(run_dir / "config.yaml")
    if adapter_only and not adapters.uses_adapters(recipe):
        raise UserError(f"--adapter-only: {run_dir} trained every parameter (model.lora.r is 0); export it without --adapter-only")
    tok = open_cache(recipe.data).tokenizer
    hf_config = build_hf_config(recipe, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    state = {k.removeprefix("lm."): v for k, v in state.items()}
    if adapters.uses_adapters(recipe):  # the checkpoint holds what trained; the base comes from its folder
        model = adapters.adapted_from_checkpoint(recipe, hf_config, state)
        if adapter_only:
            write_adapters(recipe, model, hf_config, tok, out)
            return out
        state = adapters.merged_state_dict(model)
    write_hf_folder(_meta_model(hf_config), state, tok, out, recipe.data)
    return out


def main(argv: list[str]) -> int:
    p = command_parser("export", __doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced if it exists)")
    p.add_argument("--adapter-only", action="store_true",
                   help="a run that trained adapters: write the PEFT adapter folder (PeftModel.from_pretrained(base, "
                        "OUT)) instead of the weights merged into the base")
    args = p.parse_args(argv)
    out = export_checkpoint(args.run, args.step, args.out, args.adapter_only)
    print(f"exported to {out}")
    return 0
