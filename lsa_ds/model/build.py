"""Build the causal LM a run trains from its HF config (`lsa_ds.model.config`): ZeRO-3
construction, activation checkpointing, tiled MLPs, adapters; and parameter counts.

Under ZeRO-3 an `HfDeepSpeedConfig` is made alive first so transformers partitions parameters
while constructing and still runs its own weight init (a bare `deepspeed.zero.Init` skips it:
embeddings come out with std 1.0, not 0.02). With `model.lora.r > 0` the result is a peft model
(`lsa_ds.model.adapters`).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PretrainedConfig
from transformers.integrations import HfDeepSpeedConfig
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from lsa_ds.model.adapters import add_adapters
from lsa_ds.model.config import checkpoint_dir, expected_inv_freq
from lsa_ds.model.memory import tile_mlps
from lsa_ds.recipe import Recipe
from lsa_ds.recipe.ds_config import zero_stage


# -------------------------------------------------------------------------------------- model
def build_model(recipe: Recipe, hf_config: PretrainedConfig, ds_config: dict | None) -> torch.nn.Module:
    """Construct (or load) the causal LM; partitioned at construction when `ds_config` is ZeRO-3.

    Under ZeRO-3 the process group must already be initialised (`deepspeed.init_distributed`) and
    `ds_config` must be the resolved dict the engine will use (same batch sizes and world size).
    """

    hf_ds = None
    if zero_stage(ds_config) == 3:
        # transformers keeps only a weakref to this; it must stay alive for the model's lifetime
        # (from_pretrained, save, resize all consult it), hence it is stored on the model below.
        hf_ds = HfDeepSpeedConfig(ds_config)
    else:
        # A ZeRO-3 config left alive by an earlier build in this process would partition this model too.
        unset_hf_deepspeed_config()

    torch.manual_seed(recipe.train.seed)  # every rank builds the same init
    source = checkpoint_dir(recipe)
    # fp32 master weights: DeepSpeed casts to bf16/fp16 itself according to the ds config.
    common = {"dtype": torch.float32, "attn_implementation": hf_config._attn_implementation}
    if recipe.model.load_in_4bit:  # QLoRA (refused earlier without CUDA and bitsandbytes)
        common |= _four_bit()
    if source is None:
        model = AutoModelForCausalLM.from_config(hf_config, **common)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, config=hf_config, **common)
    model._lsa_hf_ds_config = hf_ds
    model.config.use_cache = False

    if recipe.model.activation_checkpointing:
        # Non-reentrant checkpointing works with inputs that do not require grad and with ZeRO-3 hooks.
        # (transformers 5.24 renamed gradient_checkpointing_enable; the old name warns until v6.)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if recipe.model.tiled_mlp:
        tile_mlps(model)
    _assert_rope_effective(model, hf_config)
    if recipe.model.lora.r:
        model = add_adapters(recipe, model)
    return model


def _four_bit() -> dict:
    """from_pretrained arguments for a 4-bit NF4 base (QLoRA), as transformers documents it under
    ZeRO-3: the quantized storage dtype equals the compute dtype, so ZeRO-3 can partition it."""

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
    return {"dtype": torch.bfloat16, "quantization_config": quant}


def _assert_rope_effective(model: torch.nn.Module, hf_config: PretrainedConfig) -> None:
    """The rotary buffers must be the ones the requested rope_parameters produce (a bug otherwise)."""
    want = hf_config.rope_parameters
    got = model.config.rope_parameters
    if {k: got.get(k) for k in want} != want:
        raise RuntimeError(f"RoPE parameters not applied: requested {want}, model has {got}")
    rotaries = [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "rope_type")]
    if not rotaries:
        raise RuntimeError(f"no rotary embedding found in {type(model).__name__}")
    expected = expected_inv_freq(model.config)
    for rot in rotaries:
        if rot.rope_type != want["rope_type"] or not torch.allclose(rot.inv_freq.float().cpu(), expected, rtol=1e-3):
            raise RuntimeError(f"{type(rot).__name__}: inv_freq does not match rope_parameters {want}")


# --------------------------------------------------------------------------------- counting
def count_params(model: torch.nn.Module, trainable: bool = False) -> int:
    """Total parameters (tied weights once), or only those that train; under ZeRO-3 the full
    size, not the local shard."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad or not trainable)


def local_param_numel(model: torch.nn.Module) -> int:
    """Parameter elements this rank holds: its ZeRO-3 partition, else every element."""
    return sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())

