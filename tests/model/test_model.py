"""Model building: presets, RoPE scaling that really reaches the rotary buffers, user errors, and
ZeRO-3 construction (partitioned at build, HF init kept) in a world-size-1 DeepSpeed subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from lsa_ds.errors import UserError
from lsa_ds.model.build import _assert_rope_effective, build_model, count_params, local_param_numel
from lsa_ds.model.config import PRESETS, build_hf_config, expected_inv_freq, rope_summary
from lsa_ds.recipe import load_recipe
from lsa_ds.train.distributed import free_port

VOCAB, BOS, EOS, PAD = 300, 1, 2, 0


def recipe(*sets: str):
    return load_recipe(None, ["model.preset=tiny", "train.seq_len=128", *sets])


def hf_config(*sets: str, vocab: int = VOCAB):
    return build_hf_config(recipe(*sets), vocab, BOS, EOS, PAD)


def build(*sets: str):
    r = recipe(*sets)
    return build_model(r, build_hf_config(r, VOCAB, BOS, EOS, PAD), None)


def plain_inv_freq(theta: float, dim: int = 16) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)


# ----------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset, cls", [("tiny", "LlamaForCausalLM"), ("tiny-mistral", "MistralForCausalLM"),
                                         ("tiny-qwen2", "Qwen2ForCausalLM")])
def test_small_presets_build_and_run(preset, cls):
    model = build(f"model.preset={preset}")
    assert type(model).__name__ == cls
    assert model.config.vocab_size == VOCAB and model.config.use_cache is False
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (BOS, EOS, PAD)
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(0, VOCAB, (2, 24))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 24, VOCAB) and torch.isfinite(out.loss)
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(0.02, abs=0.004)
    assert count_params(model) == local_param_numel(model) == sum(p.numel() for p in model.parameters())


def test_preset_table():
    assert {"tiny", "demo-h64", "cpu-h192", "tiny-mistral", "tiny-qwen2", "llama2-7b"} <= set(PRESETS)
    for name, kwargs in PRESETS.items():
        assert not {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"} & set(kwargs), name
    h192 = build_model(r := load_recipe(None, ["model.preset=cpu-h192", "train.seq_len=128"]),
                       build_hf_config(r, 4096, BOS, EOS, PAD), None)
    assert 3.0e6 < count_params(h192) < 3.3e6  # the 3.2M calibration shape (docs/demo-calibration.md)
    assert h192.lm_head.weight is h192.model.embed_tokens.weight
    with pytest.raises(UserError, match="model.preset='demo': unknown preset; it is now called 'cpu-h192'"):
        build_hf_config(load_recipe(None, ["model.preset=demo"]), 4096, BOS, EOS, PAD)
    # Paper scale: the config only (never built in tests); ×2 linear to 8k.
    cfg = build_hf_config(load_recipe(None, ["model.preset=llama2-7b", "train.seq_len=8192", "model.rope.type=linear"]),
                          32000, 1, 2, None)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.max_position_embeddings) == (32, 4096, 8192)
    assert rope_summary(cfg) == {"type": "linear", "factor": 2.0, "theta": 10000.0,
                                 "original_max_position_embeddings": None, "max_position_embeddings": 8192}


def test_overrides_and_attention_choice():
    cfg = hf_config("model.overrides={num_hidden_layers: 3}", "model.attn_impl=eager")
    assert cfg.num_hidden_layers == 3 and cfg._attn_implementation == "eager"
    assert build("model.attn_impl=eager").config._attn_implementation == "eager"
    for bad, match in [("{vocab_size: 10}", "overrides.vocab_size.*tokenizer"),
                       ("{rope_theta: 5e5}", "model.rope.theta"),
                       ("{hiden_size: 8}", "overrides.hiden_size: not a field of LlamaConfig"),
                       ("{hidden_size: 65}", "model.overrides:.*multiple"),
                       ("{model_type: gpt9}", "model_type='gpt9': not a transformers model type")]:
        with pytest.raises(UserError, match=match):
            hf_config(f"model.overrides={bad}")


def test_activation_checkpointing_trains():
    model = build("model.activation_checkpointing=true")
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    model.train()
    ids = torch.randint(0, VOCAB, (2, 16))
    model(ids, labels=ids).loss.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None


# -------------------------------------------------------------------------------------- RoPE
def test_linear_rope_divides_frequencies_and_stretches_positions():
    model = build("train.seq_len=512", "model.rope.type=linear")  # factor defaults to ceil(512/128) = 4
    cfg = model.config
    assert rope_summary(cfg) == {"type": "linear", "factor": 4.0, "theta": 10000.0,
                                 "original_max_position_embeddings": None, "max_position_embeddings": 512}
    rot = model.model.rotary_emb
    torch.testing.assert_close(rot.inv_freq, plain_inv_freq(10000.0) / 4)
    # cos/sin at position p equal plain RoPE at p / 4 (position interpolation).
    pos = torch.arange(0, 512, 7)[None]
    cos, sin = rot(torch.zeros(1, 1, 16), pos)
    angles = (pos[0, :, None].float() / 4) * plain_inv_freq(10000.0)
    torch.testing.assert_close(cos[0], torch.cat([angles, angles], -1).cos(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sin[0], torch.cat([angles, angles], -1).sin(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rope_type, extra", [("yarn", {"beta_fast": 32.0, "beta_slow": 1.0}),
                                              ("llama3", {"low_freq_factor": 1.0, "high_freq_factor": 4.0})])
def test_yarn_and_llama3_match_transformers(rope_type, extra):
    model = build("train.seq_len=512", f"model.rope.type={rope_type}", "model.rope.factor=8")
    p = model.config.rope_parameters
    assert p == {"rope_type": rope_type, "factor": 8.0, "rope_theta": 10000.0,
                 "original_max_position_embeddings": 128, **extra}
    assert model.config.max_position_embeddings == 1024  # original × factor: HF's yarn/llama3 consistency
    want, scaling = ROPE_INIT_FUNCTIONS[rope_type](model.config)
    rot = model.model.rotary_emb
    torch.testing.assert_close(rot.inv_freq, want)
    assert rot.attention_scaling == pytest.approx(scaling)
    assert not torch.allclose(rot.inv_freq, plain_inv_freq(10000.0))
    # Both keep the highest frequency and scale the lowest by the full factor.
    assert rot.inv_freq[0] == pytest.approx(1.0)
    assert rot.inv_freq[-1] == pytest.approx(plain_inv_freq(10000.0)[-1].item() / 8, rel=1e-4)


def test_theta_override_is_abf():
    model = build("model.rope.theta=500000")
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, plain_inv_freq(500000.0))
    # ABF alone may extend the context; scaling on top keeps the new base.
    assert hf_config("train.seq_len=512", "model.rope.theta=1e6").max_position_embeddings == 512
    linear = build("train.seq_len=256", "model.rope.type=linear", "model.rope.theta=1e6")
    torch.testing.assert_close(linear.model.rotary_emb.inv_freq, plain_inv_freq(1e6) / 2)


def test_rope_explicit_original_and_factor():
    cfg = hf_config("train.seq_len=256", "model.rope.type=yarn", "model.rope.original_max_position_embeddings=64",
                    "model.rope.factor=4")
    assert rope_summary(cfg) == {"type": "yarn", "factor": 4.0, "theta": 10000.0,
                                 "original_max_position_embeddings": 64, "max_position_embeddings": 256}


def test_rope_refusals():
    with pytest.raises(UserError, match="dynamic.*refused for training"):
        hf_config("train.seq_len=512", "model.rope.type=dynamic")
    with pytest.raises(UserError, match="train.seq_len=512 exceeds.*max_position_embeddings=128.*model.rope.type"):
        hf_config("train.seq_len=512")
    with pytest.raises(UserError, match=r"factor=2 × original_max_position_embeddings=128 = 256 does not cover train.seq_len=512"):
        hf_config("train.seq_len=512", "model.rope.type=linear", "model.rope.factor=2")
    with pytest.raises(UserError, match="factor=0.5: must be at least 1"):
        hf_config("train.seq_len=32", "model.rope.type=linear", "model.rope.factor=0.5")
    with pytest.raises(UserError, match="model.rope.type=none"):
        hf_config("model.rope.factor=2")


def test_rope_check_catches_a_model_that_ignored_the_request():
    model = build()
    with pytest.raises(RuntimeError, match="RoPE parameters not applied"):
        _assert_rope_effective(model, hf_config("train.seq_len=256", "model.rope.type=linear"))
    torch.testing.assert_close(expected_inv_freq(model.config), plain_inv_freq(10000.0))


# ---------------------------------------------------------------------- local checkpoints
def _save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def test_model_path_and_init_from_load_weights(tmp_path):
    src = build("train.seed=7")
    folder = _save(src, tmp_path / "ckpt")
    loaded = build(f"model.path={folder}", "train.seq_len=256", "model.rope.type=linear")
    torch.testing.assert_close(loaded.model.embed_tokens.weight, src.model.embed_tokens.weight)
    assert loaded.config.rope_parameters["factor"] == 2.0
    torch.testing.assert_close(loaded.model.rotary_emb.inv_freq, plain_inv_freq(10000.0) / 2)

    # An extended run continues with its own RoPE when no new scaling is requested.
    run = tmp_path / "runs" / "stage2"
    _save(loaded, run / "hf")
    again = build(f"model.init_from={run}", "train.seq_len=256")
    assert again.config.rope_parameters["rope_type"] == "linear" and again.config.max_position_embeddings == 256
    torch.testing.assert_close(again.model.layers[0].mlp.up_proj.weight, src.model.layers[0].mlp.up_proj.weight)
    # Extending it again: the default factor is relative to the pre-extension 128, not 256.
    further = hf_config(f"model.init_from={run}", "train.seq_len=1024", "model.rope.type=linear")
    assert rope_summary(further)["factor"] == 8.0 and further.max_position_embeddings == 1024


def test_checkpoint_refusals(tmp_path):
    with pytest.raises(UserError, match="model.path='/no/such/dir': folder not found"):
        hf_config("model.path=/no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        hf_config(f"model.path={tmp_path / 'empty'}")
    with pytest.raises(UserError, match="has no hf/ export; finish or export it first"):
        hf_config(f"model.init_from={tmp_path}")
    with pytest.raises(UserError, match="set only one"):
        hf_config(f"model.path={tmp_path}", f"model.init_from={tmp_path}")
    with pytest.raises(UserError, match="unknown preset"):
        hf_config("model.preset=gpt5")
    folder = _save(build(), tmp_path / "ckpt")
    with pytest.raises(UserError, match="vocab_size=300 does not match the tokenizer's 4096"):
        hf_config(f"model.path={folder}", vocab=4096)
    with pytest.raises(UserError, match="vocab_size=300 does not match the tokenizer's 200"):
        hf_config(f"model.path={folder}", vocab=200)  # a fresh SentencePiece never fits a checkpoint
    # A padded embedding under the checkpoint's own HF tokenizer is fine (Qwen2 does this).
    assert hf_config(f"model.path={folder}", "data.tokenizer.type=hf", f"data.tokenizer.path={folder}",
                     vocab=290).vocab_size == 300


def test_flash_attention_needs_flash_attn():
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="flash_attn package is not installed"):
            hf_config("model.attn_impl=flash_attention_2")


# --------------------------------------------------------------------------------- ZeRO-3
_ZERO3_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    import torch, deepspeed
    from lsa_ds.train.distributed import init_distributed
    init_distributed()
    from lsa_ds.recipe import load_recipe
    from lsa_ds.recipe.ds_config import resolve_ds_config
    from lsa_ds.model.config import build_hf_config
    from lsa_ds.model.build import build_model, count_params, local_param_numel

    def recipe(*sets):
        return load_recipe(None, ["model.preset=tiny", "train.seq_len=256", "model.rope.type=linear", *sets])

    out = {}
    r = recipe()
    cfg = build_hf_config(r, 300, 1, 2, 0)
    plain = build_model(r, cfg, None)
    out["plain_count"] = count_params(plain)
    folder = tempfile.mkdtemp()
    plain.save_pretrained(folder)

    ds = resolve_ds_config(r, 1)
    model = build_model(r, build_hf_config(r, 300, 1, 2, 0), ds)
    params = list(model.parameters())
    out["all_partitioned"] = all(hasattr(p, "ds_tensor") for p in params)
    out["numel_outside_forward"] = sum(p.numel() for p in params)
    out["count"], out["local"] = count_params(model), local_param_numel(model)
    out["keeps_hf_ds_config"] = model._lsa_hf_ds_config is not None
    emb = model.model.embed_tokens.weight
    with deepspeed.zero.GatheredParameters([emb]):
        out["emb_std"] = emb.std().item()
    out["inv_freq0"] = model.model.rotary_emb.inv_freq[0].item()

    # One real optimizer step with the resolved config (clipping, overflow checks, stage 3).
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=ds)
    ids = torch.randint(0, 300, (1, 64))
    loss = engine(ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
    out["loss"] = loss.item()

    # Local checkpoint loaded partitioned, weights intact.
    loaded = build_model(recipe(f"model.path={folder}"), build_hf_config(recipe(f"model.path={folder}"), 300, 1, 2, 0), ds)
    w = loaded.model.layers[0].mlp.up_proj.weight
    with deepspeed.zero.GatheredParameters([w]):
        out["loaded_equal"] = torch.equal(w.detach().clone(), plain.model.layers[0].mlp.up_proj.weight)
    out["loaded_partitioned"] = hasattr(w, "ds_tensor")

    # bf16 ZeRO-3 build keeps the RoPE check (buffers stay fp32) and still inits properly.
    rb = recipe("train.precision=bf16")
    mb = build_model(rb, build_hf_config(rb, 300, 1, 2, 0), resolve_ds_config(rb, 1))
    out["bf16_dtype"] = str(mb.model.embed_tokens.weight.ds_tensor.dtype)
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.deepspeed
def test_zero3_build_partitions_and_keeps_hf_init(tmp_path):
    pytest.importorskip("deepspeed")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _ZERO3_SCRIPT], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))

    assert out["all_partitioned"] and out["numel_outside_forward"] == 0
    assert out["count"] == out["plain_count"] and 0 < out["local"]
    assert out["keeps_hf_ds_config"]
    # HF's init survived partitioned construction: std 0.02, not the 1.0 a bare zero.Init gives.
    assert out["emb_std"] == pytest.approx(0.02, abs=0.004)
    assert out["inv_freq0"] == pytest.approx(0.5)  # linear ×2 applied under ZeRO-3 too
    assert 0 < out["loss"] < 10
    assert out["loaded_equal"] and out["loaded_partitioned"]
    assert out["bf16_dtype"] == "torch.bfloat16"
