"""HF export: consolidated weights as safetensors + config.json (effective RoPE) + tokenizer files.

Two ways in: at the end of training straight from the engine (ZeRO-3 shards gathered in memory),
and `lsa export RUN [--step N] --out DIR` from any saved checkpoint (DeepSpeed's zero_to_fp32).
Either way the folder is written under a temporary name and renamed when complete, and plain
`AutoModelForCausalLM.from_pretrained(DIR)` / `AutoTokenizer.from_pretrained(DIR)` load it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from lsa_ds.cli_help import command_parser
from lsa_ds.data.tokenizer import Tokenizer, to_hf_tokenizer
from lsa_ds.errors import UserError


def write_hf_folder(model, state_dict: dict[str, torch.Tensor], tok: Tokenizer, out: Path, data=None,
                    max_shard_size: str = "2GB") -> None:
    """Write weights (sharded past max_shard_size), config, generation defaults and tokenizer into
    `out`, atomically. The config is the one for inference: training runs without a KV cache
    (packed documents restart position ids), `generate` on the export wants one."""
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

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
    hf_tok = to_hf_tokenizer(tok)
    hf_tok.model_max_length = model.config.max_position_embeddings
    hf_tok.save_pretrained(tmp)
    if tok.kind == "sentencepiece":
        shutil.copy(tok.path, tmp / "tokenizer.model")  # the original, for tools that want SentencePiece
    (tmp / "lsa_tokenizer.json").write_text(json.dumps(tok.describe(), indent=2))
    if data is not None:  # `lsa eval` of this folder, wherever it is copied, scores the run's held-out split
        (tmp / "lsa_data.json").write_text(data.model_dump_json(indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def export_from_engine(engine, lm, hf_config, tok: Tokenizer, out: Path) -> None:
    """Collective: every rank takes part in gathering the weights; rank 0 writes."""
    import torch.distributed as dist

    state = engine.consolidated_state_dict()
    if dist.get_rank() == 0:
        write_hf_folder(lm, state, tok, out, engine.recipe.data)
    dist.barrier()


def export_checkpoint(run_dir: Path, step: int | None, out: Path) -> Path:
    """Turn a saved checkpoint's ZeRO shards into an HF folder (one process, no DeepSpeed launch)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    from lsa_ds import checkpoint
    from lsa_ds.config import load_recipe
    from lsa_ds.data import open_cache
    from lsa_ds.model import build_hf_config

    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    ckpt_dir = run_dir / "checkpoints"
    tags = checkpoint.complete_tags(ckpt_dir)
    if not tags:
        raise UserError(f"{run_dir}: no complete checkpoint to export")
    tag = checkpoint.tag_for(step) if step is not None else tags[-1]
    if tag not in tags:
        raise UserError(f"{run_dir}: no complete checkpoint for step {step} (have: {', '.join(tags)})")
    recipe = load_recipe(run_dir / "config.yaml")
    tok = open_cache(recipe.data).tokenizer
    hf_config = build_hf_config(recipe, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    state = {k.removeprefix("lm."): v for k, v in state.items()}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    write_hf_folder(model, state, tok, out, recipe.data)
    return out


def main(argv: list[str]) -> int:
    p = command_parser("export", __doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced if it exists)")
    args = p.parse_args(argv)
    out = export_checkpoint(args.run, args.step, args.out)
    print(f"exported to {out}")
    return 0
