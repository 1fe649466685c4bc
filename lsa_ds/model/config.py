"""The Hugging Face config a run builds its model from: architecture (a preset, a local folder or a
hub name in the local Hugging Face cache, or an earlier run's export), tokenizer ids, RoPE scaling
and attention, without any weights.

RoPE scaling is written into transformers 5's `rope_parameters` *before* the model is constructed
(changing it on a built model is a silent no-op: the rotary buffers are computed in `__init__`).
The config can thus be checked and recorded (`lsa train --dry-run`, run.json) before a rank
starts; `lsa_ds.model.build` turns it into a model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from lsa_ds.data import hub
from lsa_ds.errors import UserError
from lsa_ds.model import s2_attention
from lsa_ds.recipe import Recipe
from lsa_ds.recipe.schema import default_rope_factor

_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=176, max_position_embeddings=128, tie_word_embeddings=True)

PRESETS: dict[str, dict[str, Any]] = {
    # Test-sized LLaMA: builds in milliseconds, head_dim 16.
    "tiny": {"model_type": "llama", **_SMALL},
    # Hidden 192, 4 layers, tied, ≈3.15M parameters at vocab 4096: the shape first calibrated for
    # the CPU demo (docs/demo-calibration.md: 3.2M; intermediate 768 reaches that count with tied
    # embeddings). The demo itself moved to demo-h64; this one is the CPU benchmarks' model.
    "cpu-h192": {"model_type": "llama", "hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 4, "intermediate_size": 768, "max_position_embeddings": 128,
             "tie_word_embeddings": True},
    # The demo's model: hidden 64, 2 layers, 4 heads, tied, ≈0.4M parameters at vocab 4096 (the
    # calibration in docs/demo-calibration.md: as much context use as hidden 128 or 192 in minutes,
    # at half the step time).
    "demo-h64": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 4, "intermediate_size": 256, "max_position_embeddings": 128,
                 "tie_word_embeddings": True},
    # Same size, other LLaMA-class families. Mistral's sliding window is off so attention over
    # long views means the same thing in every preset.
    "tiny-mistral": {"model_type": "mistral", **_SMALL, "sliding_window": None},
    "tiny-qwen2": {"model_type": "qwen2", **_SMALL},
    # Paper scale (Llama-2-7B's architecture); for real runs start from its weights via model.path.
    "llama2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                  "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
                  "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
}
"""Built-in architectures as HF config kwargs. Never vocab or special ids: those come from the tokenizer."""

RENAMED_PRESETS = {"demo": "cpu-h192"}
"""Former preset names, named in the error that refuses them."""

# Keys that recipes must not smuggle in through model.overrides: they have their own owners.
_OWNED_KEYS = {
    "vocab_size": "it comes from the tokenizer",
    "bos_token_id": "it comes from the tokenizer", "eos_token_id": "it comes from the tokenizer",
    "pad_token_id": "it comes from the tokenizer",
    "rope_parameters": "use model.rope.*", "rope_scaling": "use model.rope.*", "rope_theta": "use model.rope.theta",
    "use_cache": "training needs use_cache=false", "attn_implementation": "use model.attn_impl",
}

# Defaults written explicitly so the recorded config says what ran (the values transformers and
# Llama 3.1 / the YaRN paper use when the keys are absent).
_YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0}
_LLAMA3_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}


# ------------------------------------------------------------------------------------- config
def checkpoint_dir(recipe: Recipe) -> Path | None:
    """The local HF folder the weights come from, or None for a preset (fresh init). `model.path`
    may be a hub name, resolved in the local Hugging Face cache (`lsa_ds.data.hub`)."""
    m = recipe.model
    if m.path and m.init_from:
        raise UserError(f"model.path={m.path!r} and model.init_from={m.init_from!r}: set only one of them")
    if m.init_from:  # a run directory only: a model folder or a hub name goes in model.path
        run = Path(m.init_from).expanduser()
        if not run.is_dir():
            raise UserError(f"model.init_from={m.init_from!r}: no such run directory (a Hugging Face model folder "
                            f"or hub name goes in model.path)")
        if not (run / "hf" / "config.json").is_file():
            raise UserError(f"model.init_from={m.init_from!r}: run {m.init_from} has no hf/ export; finish or export it first")
        return run / "hf"
    if m.path:
        path = hub.resolve(m.path, "model.path", expect=hub.MODEL_WEIGHTS)
        if not path.is_dir():
            raise UserError(f"model.path={m.path!r}: folder not found")
        if not (path / "config.json").is_file():
            raise UserError(f"model.path={m.path!r}: no config.json there (expected a Hugging Face checkpoint folder)")
        return path
    return None


def build_hf_config(recipe: Recipe, vocab_size: int | None, bos_id: int | None, eos_id: int | None,
                    pad_id: int | None) -> PretrainedConfig:
    """The HF config the model will be built from: architecture + tokenizer ids + RoPE + attention.
    vocab_size None: the tokenizer is not known yet (checks before the data exist; a preset is
    built with data.tokenizer.vocab_size and a checkpoint's vocabulary is not compared)."""
    source = checkpoint_dir(recipe)
    if source is None:
        cfg = _preset_config(recipe, vocab_size or recipe.data.tokenizer.vocab_size)
    else:
        cfg = _checkpoint_config(recipe, source, vocab_size)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = bos_id, eos_id, pad_id
    cfg.use_cache = False  # restarted position ids keep packed documents apart only without a KV cache
    _apply_rope(cfg, recipe)
    cfg._attn_implementation = _attn_impl(recipe)
    return cfg


def _preset_config(recipe: Recipe, vocab_size: int) -> PretrainedConfig:
    name = recipe.model.preset
    if name not in PRESETS:
        renamed = f"; it is now called {RENAMED_PRESETS[name]!r}" if name in RENAMED_PRESETS else ""
        raise UserError(f"model.preset={name!r}: unknown preset{renamed} (known: {', '.join(PRESETS)}); or set model.path")
    kwargs = {**PRESETS[name], **recipe.model.overrides}
    for key in recipe.model.overrides:
        if key in _OWNED_KEYS:
            raise UserError(f"model.overrides.{key}: not allowed here, {_OWNED_KEYS[key]}")
    model_type = kwargs.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        raise UserError(f"model.overrides.model_type={model_type!r}: not a transformers model type")
    cls = CONFIG_MAPPING[model_type]
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else None
    for key in recipe.model.overrides:
        if known is not None and key != "model_type" and key not in known:
            raise UserError(f"model.overrides.{key}: not a field of {cls.__name__}")
    try:
        return AutoConfig.for_model(model_type, vocab_size=vocab_size, **kwargs)
    except (ValueError, TypeError, StrictDataclassError) as e:  # strict-dataclass validation of the overrides
        raise UserError(f"model.overrides: {' '.join(str(e).split())}") from None


def _checkpoint_config(recipe: Recipe, source: Path, vocab_size: int | None) -> PretrainedConfig:
    try:
        cfg = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise UserError(f"{source}/config.json: cannot load ({' '.join(str(e).split())})") from None
    have = cfg.vocab_size
    # A checkpoint's embedding may be padded beyond its own tokenizer (Qwen2 does this), so a
    # smaller HF tokenizer is fine; a freshly trained SentencePiece of another size never matches.
    if vocab_size is not None and (vocab_size > have or (vocab_size < have and recipe.data.tokenizer.type != "hf")):
        raise UserError(
            f"{source}: checkpoint vocab_size={have} does not match the tokenizer's {vocab_size} tokens; "
            f"use the checkpoint's tokenizer (data.tokenizer.type=hf, data.tokenizer.path={recipe.model.path or source})"
        )
    if recipe.model.overrides:
        raise UserError(f"model.overrides: only for presets; {source} has its own architecture")
    return cfg


def _apply_rope(cfg: PretrainedConfig, recipe: Recipe) -> None:
    """Write the requested RoPE into `cfg.rope_parameters` and set max_position_embeddings."""
    rope, L = recipe.model.rope, recipe.train.seq_len
    existing = dict(cfg.rope_parameters or {})
    theta = float(rope.theta or existing.get("rope_theta") or getattr(cfg, "default_theta", 10_000.0))
    model_max = int(cfg.max_position_embeddings)

    if rope.type == "dynamic":
        raise UserError(
            "model.rope.type=dynamic: dynamic NTK rescales by the longest length seen so far, so training would "
            "depend on batch history; it is refused for training (use linear, yarn or llama3)"
        )
    if rope.type == "none":
        if rope.factor is not None or rope.original_max_position_embeddings is not None:
            raise UserError("model.rope.factor/original_max_position_embeddings are set but model.rope.type=none")
        # Keep the model's own RoPE (plain for presets; an earlier extension for checkpoints).
        params = existing or {"rope_type": "default"}
        params["rope_theta"] = theta
        if params.get("rope_type") == "dynamic":
            raise UserError("model.rope.type=none keeps the checkpoint's dynamic NTK RoPE, which is refused for "
                            "training; set model.rope.type (linear, yarn or llama3)")
        if L > model_max:
            if rope.theta is None:
                raise UserError(
                    f"train.seq_len={L} exceeds the model's max_position_embeddings={model_max} with model.rope.type=none; "
                    f"set model.rope.type (linear, yarn or llama3) or raise model.rope.theta (ABF)"
                )
            model_max = L  # ABF alone: a larger base is the extension
    else:
        original = rope.original_max_position_embeddings or _pre_extension_length(existing, model_max)
        factor = float(rope.factor) if rope.factor is not None else default_rope_factor(L, original)
        if factor < 1:
            raise UserError(f"model.rope.factor={factor}: must be at least 1 (it stretches positions)")
        if original * factor < L:
            raise UserError(
                f"model.rope.factor={factor:g} × original_max_position_embeddings={original} = {original * factor:g} "
                f"does not cover train.seq_len={L}; raise the factor (default ceil(seq_len / original))"
            )
        params = {"rope_type": rope.type, "factor": factor, "rope_theta": theta}
        if rope.type == "yarn":
            params |= {"original_max_position_embeddings": int(original), **_YARN_DEFAULTS}
        elif rope.type == "llama3":
            params |= {"original_max_position_embeddings": int(original), **_LLAMA3_DEFAULTS}
        if "partial_rotary_factor" in existing:
            params["partial_rotary_factor"] = existing["partial_rotary_factor"]
        # The extended capacity is original × factor (what HF's yarn/llama3 consistency checks assume:
        # max_position_embeddings / original == factor); it covers L by the check above.
        model_max = max(L, math.ceil(original * factor))

    cfg.max_position_embeddings = int(model_max)
    cfg.rope_parameters = params
    cfg.standardize_rope_params()
    cfg.validate_rope()


def _pre_extension_length(existing: dict, model_max: int) -> int:
    """The context the model had before any RoPE scaling: recorded by yarn/llama3, implied by a
    linear factor (an earlier extension stage), else the model's max_position_embeddings. Scaling a
    second time is then relative to the true original, so factors compound instead of resetting."""
    if existing.get("original_max_position_embeddings"):
        return int(existing["original_max_position_embeddings"])
    if existing.get("rope_type") not in (None, "default") and existing.get("factor"):
        return max(1, round(model_max / float(existing["factor"])))
    return model_max


def _attn_impl(recipe: Recipe) -> str:
    m = recipe.model
    if m.attn_impl == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise UserError("model.attn_impl=flash_attention_2: the flash_attn package is not installed (it needs CUDA); use sdpa")
    if m.attn_pattern == "s2":
        if m.attn_impl != "sdpa":
            raise UserError(f"model.attn_pattern=s2 runs on SDPA; set model.attn_impl=sdpa (got {m.attn_impl})")
        problem = s2_attention.check_group(recipe.train.seq_len, m.s2_group_ratio)
        if problem:
            raise UserError(problem)
        return s2_attention.register(m.s2_group_ratio)  # training only: eval mode is plain SDPA
    return m.attn_impl


def rope_summary(hf_config: PretrainedConfig) -> dict[str, Any]:
    """The RoPE actually configured, for the run record."""
    p = hf_config.rope_parameters or {}
    return {
        "type": p.get("rope_type", "default"),
        "factor": p.get("factor"),
        "theta": p.get("rope_theta"),
        "original_max_position_embeddings": p.get("original_max_position_embeddings"),
        "max_position_embeddings": hf_config.max_position_embeddings,
    }


def expected_inv_freq(hf_config: PretrainedConfig) -> torch.Tensor:
    """inv_freq as transformers computes it for `hf_config` (the plain formula for type default)."""
    p = hf_config.rope_parameters
    if p["rope_type"] == "default":
        dim = int((getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads)
                  * p.get("partial_rotary_factor", 1.0))
        return 1.0 / (p["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    inv_freq, _ = ROPE_INIT_FUNCTIONS[p["rope_type"]](hf_config)
    return inv_freq.float()


