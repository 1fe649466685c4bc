"""The per-rank memory estimate (`lsa_ds/model/estimate.py`) and `lsa train --dry-run` printing it:
behaviour, not timing. DeepSpeed's own estimators are the reference for the model states."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lsa_ds.model.config import build_hf_config
from lsa_ds.model.estimate import GIB, estimate_memory, param_counts
from lsa_ds.recipe import load_recipe
from lsa_ds.recipe.ds_config import resolve_ds_config
from lsa_ds.train.cli import main

SEVEN_B = ["model.preset=llama2-7b", "data.tokenizer.vocab_size=32000", "train.precision=bf16", "train.max_steps=1",
           "train.seq_len=4096"]


def _estimate(overrides: list[str], world: int = 8, target: str = "gpu"):
    recipe = load_recipe(None, overrides)
    config = build_hf_config(recipe, None, None, None, None)
    return estimate_memory(recipe, config, resolve_ds_config(recipe, world), world, target=target)


def _item(est, prefix: str) -> float:
    return sum(i.bytes for i in est.items if i.name.startswith(prefix))


@pytest.mark.parametrize("template, offload", [("zero3", False), ("zero3_offload", True)])
def test_zero3_model_states_are_deepspeeds_own_estimate_at_every_world_size(template, offload):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    before = None
    for world in (1, 2, 8, 64):
        est = _estimate([*SEVEN_B, f"train.ds_config={template}", "optim.impl=deepspeed"], world)
        p = est.params
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(p.total, p.largest_layer, num_gpus_per_node=world,
                                                           cpu_offload=offload, cpu_offload_params=offload)
        assert est.total("device", "model states") == pytest.approx(gpu, abs=8)
        if offload:  # DeepSpeed's host figure is per node, with its 1.5x buffer factor
            assert est.total("host") * world * 1.5 == pytest.approx(cpu, rel=1e-9)
        assert est.deepspeed == pytest.approx((cpu, gpu))
        if before is not None and not offload:
            assert est.total("device", "model states") < before
        before = est.total("device", "model states")


def test_zero2_model_states_are_deepspeeds_own_estimate():
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    for world in (2, 8):
        est = _estimate([*SEVEN_B, "train.ds_config=zero2"], world)
        _, gpu = estimate_zero2_model_states_mem_needs(est.params.total, num_gpus_per_node=world, cpu_offload=False)
        assert est.total("device", "model states") == pytest.approx(gpu, abs=8)


def _built(config) -> tuple[int, int]:
    from deepspeed.runtime.zero.stage3 import model_to_params
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return model_to_params(AutoModelForCausalLM.from_config(config))  # (total, largest layer), tied once


@pytest.mark.parametrize("overrides", [
    ["model.preset=tiny"], ["model.preset=tiny-mistral"], ["model.preset=tiny-qwen2"], ["model.preset=cpu-h192"],
    ["model.preset=tiny", "model.overrides={tie_word_embeddings: false, attention_bias: true, mlp_bias: true}"],
])
def test_parameter_count_equals_a_model_built_from_the_same_config(overrides):
    recipe = load_recipe(None, [*overrides, "data.tokenizer.vocab_size=1000"])
    config = build_hf_config(recipe, None, None, None, None)
    counted = param_counts(config, recipe)
    assert (counted.total, counted.largest_layer) == _built(config)
    assert counted.trainable == counted.total


def test_lora_trains_only_the_adapters_and_extra_parameters(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = ["model.preset=tiny", "data.tokenizer.vocab_size=1000", "model.lora.r=8",
            "model.lora.target_modules=[q_proj, v_proj]", "model.extra_trainable=[norm]", "train.max_steps=1"]
    recipe = load_recipe(None, lora)
    config = build_hf_config(recipe, None, None, None, None)
    counted = param_counts(config, recipe)
    lora_config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_config(config), lora_config)
    for name, p in model.named_parameters():
        if "norm" in name and "lora_" not in name:
            p.requires_grad_(True)
    assert counted.total == sum(p.numel() for p in model.parameters())
    assert counted.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)

    full, adapted = _estimate(lora[:2] + ["train.max_steps=1"], 2), _estimate(lora, 2)
    # gradients and Adam moments only for what trains; every parameter still has its copy
    assert _item(adapted, "model states: Adam moments") == 8 * counted.trainable / 2
    assert _item(adapted, "model states: gradients") == 4 * counted.trainable / 2
    assert _item(adapted, "model states: parameters") == 4 * counted.total / 2
    assert _item(adapted, "model states: Adam moments") < _item(full, "model states: Adam moments") / 10


def test_checkpointing_offload_tiling_and_sequence_parallel_lower_the_activations():
    base = [*SEVEN_B, "train.seq_len=8192", "model.rope.type=linear"]
    plain = _estimate(base).total("device", "activations")
    ckpt = _estimate([*base, "model.activation_checkpointing=true"]).total("device", "activations")
    tiled = _estimate([*base, "model.activation_checkpointing=true", "model.tiled_mlp=true"])
    tiled = tiled.total("device", "activations")
    off = _estimate([*base, "model.activation_checkpointing=true", "model.activation_offload=true"])
    sp = _estimate([*base, "model.activation_checkpointing=true", "train.sequence_parallel=8"])
    assert ckpt < plain / 5
    assert tiled < ckpt
    assert off.total("device", "activations") < ckpt and off.total("host") > 0
    assert sp.total("device", "activations") < ckpt / 4


def test_alignment_doubles_the_rows_of_the_forward():
    base = [*SEVEN_B, "model.activation_checkpointing=true"]
    on, off = _estimate([*base, "align.enabled=true"]), _estimate([*base, "align.enabled=false"])
    for name in ("activations: checkpoints", "activations: one layer recomputed", "activations: backward working set"):
        assert _item(on, name) == pytest.approx(2 * _item(off, name))
    micro2 = _estimate([*base, "align.enabled=false", "train.micro_batch_size=2"])
    assert _item(micro2, "activations: checkpoints") == _item(on, "activations: checkpoints")


def test_eager_attention_grows_with_the_square_of_the_length_and_sdpa_linearly():
    def saved(attn: str, L: int) -> float:
        return _item(_estimate([*SEVEN_B, f"train.seq_len={L}", "model.rope.type=linear", f"model.attn_impl={attn}"]),
                     "activations: saved for backward")

    assert saved("sdpa", 8192) == pytest.approx(2 * saved("sdpa", 4096))
    assert saved("eager", 8192) > 3 * saved("eager", 4096)


def test_loss_chunk_buffers_follow_chunk_tokens():
    small, large = (_item(_estimate([*SEVEN_B, f"align.chunk_tokens={n}"]), "activations: loss chunk")
                    for n in (256, 2048))
    assert large > 4 * small


def _fake_llama2_7b(root) -> None:
    """A shipped 7B recipe's inputs without the weights: config.json, a tokenizer file, a text file."""
    model = root / "models" / "Llama-2-7b-hf"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}))
    (model / "tokenizer_config.json").write_text("{}")
    (root / "data").mkdir()
    (root / "data" / "pretrain.jsonl").write_text('{"text": "hello"}\n')


def test_dry_run_of_a_shipped_7b_recipe_prints_the_estimate_without_weights(tmp_path, monkeypatch, capsys):
    _fake_llama2_7b(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["llama2-7b-4k-to-8k", "--dry-run", "--nproc", "8", "--set", "model.attn_impl=sdpa"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "# Memory estimate per rank (8 ranks, for a GPU" in out and "not included" in out
    assert "CUDA context" in out and "fragmentation" in out
    assert main([*args, "--json"]) == 0
    est = json.loads(capsys.readouterr().out)["memory_estimate"]
    assert est["params"]["total"] == 6_738_415_616  # Llama-2-7B
    assert 15 * GIB < est["device_bytes"] < 60 * GIB


def test_the_dry_run_never_imports_deepspeed(tmp_path):
    _fake_llama2_7b(tmp_path)
    code = ("import sys; from lsa_ds.train.cli import main; "
            "rc = main(['llama2-7b-4k-to-8k', '--dry-run', '--json', '--set', 'model.attn_impl=sdpa']); "
            "assert rc == 0; assert 'deepspeed' not in sys.modules, 'deepspeed imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
