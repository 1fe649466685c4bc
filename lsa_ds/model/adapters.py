"""Low-rank adapters (LoRA, LongLoRA's "+") through `peft`, on a model ZeRO-3 already partitioned.

`model.lora.r > 0` freezes the base weights, wraps the HF model with `peft.get_peft_model` and
unfreezes `model.extra_trainable` parameters in place (LongLoRA's own way: embeddings and norms
train in full; peft's `modules_to_save` would copy them and untie tied embeddings). The adapters
are created after ZeRO-3 partitioned the base; `deepspeed.initialize` partitions them like any
other parameter left unpartitioned, and the optimizer only ever sees what trains.

Checkpoints hold only what trains (`exclude_frozen_parameters`): the frozen base comes back from
`model.path` / `model.init_from`, which is why adapters need one of them. Exports either merge
the adapters into the base (a plain transformers folder) or write a PEFT adapter folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lsa_ds.data import hub
from lsa_ds.errors import UserError
from lsa_ds.model.config import checkpoint_dir
from lsa_ds.recipe import Recipe

ADAPTER_DIR = "adapter"
"""The PEFT adapter folder a run writes next to hf/ when it ends (`lsa export --adapter-only` from a
checkpoint writes the same)."""


def uses_adapters(recipe: Recipe) -> bool:
    return recipe.model.lora.r > 0


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def hf_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel (adapters injected in place), or the model itself."""
    return model.get_base_model() if is_peft(model) else model


# ----------------------------------------------------------------------------------- checks
def check_adapters(recipe: Recipe, hf_config) -> None:
    """Refuse what cannot train, before any rank starts: QLoRA without CUDA/bitsandbytes, adapters
    without pretrained weights or without peft, targets and extra_trainable patterns matching
    nothing (checked on a meta-device copy of the architecture: no memory, any size)."""
    m = recipe.model
    if m.load_in_4bit:
        if not uses_adapters(recipe):
            raise UserError("model.load_in_4bit: a 4-bit base cannot train in full; QLoRA trains adapters (set model.lora.r > 0)")
        missing = [name for name, ok in (("CUDA", torch.cuda.is_available()),
                                          ("the bitsandbytes package", importlib.util.find_spec("bitsandbytes")))
                   if not ok]
        if missing:
            raise UserError(f"model.load_in_4bit: QLoRA needs {' and '.join(missing)}, which this machine does not have")
        if recipe.train.precision != "bf16":
            raise UserError(f"model.load_in_4bit: QLoRA computes in bf16; set train.precision=bf16 (got {recipe.train.precision})")
    if not uses_adapters(recipe):
        return
    if importlib.util.find_spec("peft") is None:
        raise UserError("model.lora.r: the peft package is not installed (pip install peft)")
    if not (m.path or m.init_from):
        raise UserError(f"model.lora.r={m.lora.r}: adapters train on top of pretrained weights; set model.path or model.init_from")
    # deferred: peft and transformers only when adapters are configured (LoRA runs, their exports)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(hf_config)
    modules = [name for name, _ in meta.named_modules()]
    linear = sorted({name.rsplit(".", 1)[-1] for name, mod in meta.named_modules() if isinstance(mod, nn.Linear)})
    unmatched = [t for t in m.lora.target_modules if not any(n == t or n.endswith("." + t) for n in modules)]
    if unmatched or not m.lora.target_modules:
        raise UserError(f"model.lora.target_modules: {unmatched or '[]'} match no module of {type(meta).__name__} "
                        f"(its linear layers: {', '.join(linear)})")
    names = [name for name, _ in meta.named_parameters()]  # tied weights once, under the embedding's name
    for pattern in m.extra_trainable:
        if not any(pattern in name for name in names):
            tied = " (the output layer is tied to the embeddings here: train embed_tokens)" if "lm_head" in pattern else ""
            raise UserError(f"model.extra_trainable: {pattern!r} matches no parameter of {type(meta).__name__}{tied}")


# ---------------------------------------------------------------------------------- building
def lora_config(recipe: Recipe):
    # deferred: peft only when adapters are configured
    from peft import LoraConfig

    lo = recipe.model.lora
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=list(lo.target_modules),
                      bias="none", task_type="CAUSAL_LM")


def add_adapters(recipe: Recipe, model: nn.Module) -> nn.Module:
    """Wrap `model` with LoRA adapters and unfreeze `extra_trainable`; returns the PeftModel.
    Every rank builds the same adapter init (the caller seeded torch)."""
    # deferred: peft only when adapters are configured
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(recipe))
    for pattern in recipe.model.extra_trainable:
        for name, param in peft_model.named_parameters():
            if pattern in name and "lora_" not in name:
                param.requires_grad_(True)
    return peft_model


# ----------------------------------------------------------------------------------- exports
# An export builds the adapted model on CPU once (from the engine's gathered weights, or from a
# checkpoint's trained parameters over the base), writes the PEFT folder from it, then merges it.
def adapted_from_state(recipe: Recipe, hf_config, state: dict[str, torch.Tensor]) -> nn.Module:
    """The adapted model on CPU holding `state` (keys as the PeftModel's: the engine's gathered
    weights), without copying them."""
    # deferred: peft only when adapters are configured
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # a plain CPU model: nothing may partition it
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(hf_config), lora_config(recipe))
    _, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()  # a tied output layer absent from `state` shares the embedding again
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing or unexpected:
        raise RuntimeError(f"adapted state does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def adapted_from_checkpoint(recipe: Recipe, hf_config, trained: dict[str, torch.Tensor]) -> nn.Module:
    """The adapted model on CPU from a checkpoint's trained parameters (adapters, extra_trainable)
    over the frozen base read again from model.path / init_from."""
    # deferred: as above, adapter exports only
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    model = add_adapters(recipe, AutoModelForCausalLM.from_pretrained(checkpoint_dir(recipe), config=hf_config,
                                                                      dtype=torch.float32))
    want = {name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}  # tied: both names
    if want - trained.keys() or trained.keys() - want:
        raise UserError(f"the checkpoint's trained parameters do not match model.lora / model.extra_trainable "
                        f"(missing {sorted(want - trained.keys())[:2]}, extra {sorted(trained.keys() - want)[:2]})")
    model.load_state_dict(trained, strict=False)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters merged into the base weights (in place: call it last): a state dict plain
    transformers loads."""
    return {k: v.contiguous() for k, v in model.merge_and_unload().state_dict().items()}


def write_adapter_folder(recipe: Recipe, model: nn.Module, hf_config, base: str, out: Path,
                         also: Callable[[Path], None] | None = None) -> None:
    """A PEFT folder `PeftModel.from_pretrained(base_model, out)` loads: adapter_config.json and
    adapter_model.safetensors (the adapters plus the `extra_trainable` parameters under their
    PeftModel names, which peft's loader passes straight to load_state_dict), written atomically
    (`also` adds files to the folder before it is renamed into place). config.json is the run's
    (extended RoPE): load the base with it."""
    # deferred: peft only when adapters are configured
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    adapters = get_peft_model_state_dict(model)
    extra = {name: param for name, param in model.named_parameters()
             if any(p in name for p in recipe.model.extra_trainable) and "lora_" not in name}
    tensors = {k: v.detach().contiguous() for k, v in {**adapters, **extra}.items()}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.peft_config["default"]
    config.base_model_name_or_path = str(Path(base).resolve())
    config.save_pretrained(tmp)
    save_file(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
    use_cache, hf_config.use_cache = hf_config.use_cache, True  # for inference, as hf/ (write_hf_folder)
    try:
        hf_config.save_pretrained(tmp)
    finally:
        hf_config.use_cache = use_cache
    (tmp / "lsa_adapter.json").write_text(json.dumps({"base": config.base_model_name_or_path,
                                                      "extra_trainable": list(recipe.model.extra_trainable),
                                                      "tensors": len(tensors)}, indent=2))
    if also is not None:
        also(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def adapter_base(folder: Path) -> Path:
    """The base model folder of an adapter folder (adapter_config.json's base_model_name_or_path): a
    local folder, or a hub name's snapshot in the local Hugging Face cache (PEFT writes hub names)."""
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    return hub.resolve(base, f"{folder}/adapter_config.json: base_model_name_or_path", expect=hub.MODEL_WEIGHTS)


def load_adapter_folder(folder: Path, dtype=torch.float32, attn: str = "sdpa") -> nn.Module:
    """A model from a PEFT adapter folder: its base (adapter_config.json) loaded with the folder's
    config (the run's RoPE), then `PeftModel.from_pretrained`."""
    # deferred: peft only to evaluate an adapter folder
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    base = adapter_base(folder)
    if not (base / "config.json").is_file():
        raise UserError(f"{folder}: the adapters' base model {str(base)!r} (adapter_config.json) is not a local model folder")
    cfg = AutoConfig.from_pretrained(folder) if (folder / "config.json").is_file() else None
    model = AutoModelForCausalLM.from_pretrained(base, config=cfg, dtype=dtype, attn_implementation=attn)
    return PeftModel.from_pretrained(model, folder)
