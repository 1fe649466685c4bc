"""Adapters (LoRA, LongLoRA's "+", S²-Attn) through real 2-rank ZeRO-3 runs: only what trains
changes, counts, falling loss with alignment on and off, kill -9 resume, small checkpoints, the
merged and adapter-only exports, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lsa_ds import cli
from tests.conftest import SMALL_DATA
from tests.launch import kill_tree, lsa, metrics, per_step, sets, start, wait_for_step

pytestmark = pytest.mark.deepspeed

STEPS = 8
TARGETS = "[q_proj, v_proj]"  # LongLoRA's attention-only setting: k, o and the MLP stay untouched
PLAIN = ("align.enabled=false", "model.attn_pattern=s2", "model.rope.type=linear", "train.seq_len=128",
         "model.activation_checkpointing=true")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, prepared):
    """A small pretrained base: a tiny LLaMA over the test tokenizer, trained 30 plain-PyTorch
    steps on windows of the train split (far from the ones the runs below see first), saved as an
    HF folder. Adapters on a random base barely move the loss: its frozen embeddings carry nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lsa_ds.data import build_windows

    recipe, cache = prepared
    tok = cache.tokenizer
    folder = tmp_path_factory.mktemp("base") / "model"
    cfg = AutoConfig.for_model("llama", vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, intermediate_size=176,
                               max_position_embeddings=64, tie_word_embeddings=True,
                               bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    windows = build_windows(recipe, cache, window=65)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30):
        ids = torch.tensor(np.stack([windows[10_000 + 8 * step + i] for i in range(8)]), dtype=torch.long)
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(folder)
    return folder


def common(out: Path, cache: Path, base: Path, name: str, *extra: str) -> list[str]:
    return sets(*SMALL_DATA, f"data.cache_dir={cache}", f"run.output_dir={out}", f"run.name={name}",
                "model.preset=null", f"model.path={base}", "model.lora.r=8", "model.lora.alpha=16",
                f"model.lora.target_modules={TARGETS}", "model.extra_trainable=[embed_tokens, norm]", "train.seq_len=64",
                f"train.max_steps={STEPS}", "train.micro_batch_size=2", "train.grad_accum=2", "optim.lr=3e-3",
                "optim.warmup_steps=0", "eval.windows=4", "eval.every_steps=4", "checkpoint.every_steps=2",
                "train.dist_timeout_s=30", *extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_cache_dir, base_model):
    """LongLoRA's setting (LoRA on q and v, embeddings and norms trained in full) with alignment on;
    and a LongLoRA extension without alignment: 64 -> 128 tokens by linear RoPE ×2, S²-Attn (groups
    of 32) in training, activation checkpointing."""
    out = tmp_path_factory.mktemp("lora-runs")
    recipe = out / "r.yaml"
    recipe.write_text("align: {enabled: true, alpha: 0.1}\n")
    lsa("train", str(recipe), *common(out, data_cache_dir, base_model, "lsa"), "--nproc", "2")
    lsa("train", str(recipe), *common(out, data_cache_dir, base_model, "plain", *PLAIN), "--nproc", "2")
    return out, recipe


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_only_adapters_and_extra_trainable_change_and_counts_are_recorded(runs, base_model):
    out, _ = runs
    base, merged = _weights(base_model), _weights(out / "lsa" / "hf")
    assert merged.keys() <= base.keys()
    changed = {k for k in merged if not torch.equal(merged[k], base[k])}
    trained = ("q_proj", "v_proj", "norm", "embed_tokens")
    frozen = {k for k in merged if not any(p in k for p in trained)}
    assert frozen and not (changed & frozen), sorted(changed & frozen)  # bit-identical: k, o, the MLP
    assert {k for k in merged if any(p in k for p in trained)} == changed
    info = json.loads((out / "lsa" / "run.json").read_text())
    # q: 8·(64+64), v: 8·(64+32) per layer; norms: 2 per layer of 64, and the final one; embeddings
    vocab = base["model.embed_tokens.weight"].shape[0]
    assert info["trainable_params"] == 2 * (8 * 128 + 8 * 96) + 2 * 2 * 64 + 64 + vocab * 64
    assert info["params"] == sum(t.numel() for t in base.values()) + 2 * (8 * 128 + 8 * 96)


def test_alignment_on_and_off_both_train_with_falling_loss(runs, base_model):
    """Held-out loss at L of the final model below the base's (with the run's RoPE) on the same
    windows and tokens, the base scored in-process exactly as the runs' evaluation scores."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lsa_ds.data import open_cache
    from lsa_ds.eval.forward import hf_logits_fn
    from lsa_ds.eval.heldout import cache_windows
    from lsa_ds.eval.perplexity import perplexity_at
    from lsa_ds.recipe import load_recipe

    out, _ = runs
    for name in ("lsa", "plain"):
        recipe = load_recipe(out / name / "config.yaml")
        L = recipe.train.seq_len
        windows = cache_windows(recipe, open_cache(recipe.data), 2 * L + 1, recipe.eval.windows)
        base = AutoModelForCausalLM.from_pretrained(base_model, config=AutoConfig.from_pretrained(out / name / "hf")).eval()
        with torch.no_grad():
            before = perplexity_at(hf_logits_fn(base), windows, [L, 2 * L])[L].nll.mean
        train, evals = metrics(out / name)
        assert all(r["ce"] == r["ce"] for r in train)
        assert evals[-1][f"loss@{L}"] < before - 0.03, (name, before, [e[f"loss@{L}"] for e in evals])
    lsa_rows, _ = metrics(out / "lsa")
    assert all(r["misalign_sce"] is not None and r["divergence_applied"] for r in lsa_rows)


def test_checkpoints_hold_only_what_trains(runs):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    out, _ = runs
    state = get_fp32_state_dict_from_zero_checkpoint(str(out / "lsa" / "checkpoints"))
    # lm_head.weight is the tied embedding under its second name
    assert state and all(any(p in k for p in ("lora_", "norm", "embed_tokens", "lm_head")) for k in state), sorted(state)[:5]
    assert not any("base_layer" in k for k in state)
    size = sum(f.stat().st_size for f in (out / "lsa" / "checkpoints" / f"step{STEPS:08d}").rglob("*"))
    assert size < 0.5 * sum(t.numel() * 4 * 3 for t in _weights(out / "lsa" / "hf").values())  # weights + 2 Adam moments


def test_kill_9_then_resume_gives_the_uninterrupted_losses(runs, data_cache_dir, base_model):
    out, recipe = runs
    args = common(out, data_cache_dir, base_model, "killed")
    proc = start(recipe, args)
    wait_for_step(out / "killed", 5, proc)
    kill_tree(proc)
    proc.wait()
    lsa("train", str(recipe), *args, "--resume", "--nproc", "2")
    assert per_step(out / "killed") == per_step(out / "lsa")


def test_a_two_rank_adapter_checkpoint_resumes_on_one_rank(runs, data_cache_dir, base_model):
    """The universal-checkpoint path (another world size) restores the adapters and norms, not a
    fresh init: one rank continues exactly as two ranks do from the same checkpoint."""
    import shutil

    out, recipe = runs
    got = {}
    for nproc in ("2", "1"):
        name = f"plain-more-{nproc}"
        shutil.copytree(out / "plain", out / name)
        # the same global batch of 8 windows: micro 2 × accum 2 × 2 ranks, or micro 2 × accum 4 × 1 rank
        args = common(out, data_cache_dir, base_model, name, *PLAIN, f"train.max_steps={STEPS + 2}",
                      f"train.grad_accum={4 // int(nproc)}")
        # two more steps than planned stretch the LR schedule: named, as a user must (lsa_ds.train.resume)
        lsa("train", str(recipe), *args, "--resume", "--allow-change", "train.max_steps", "--nproc", nproc)
        got[nproc] = per_step(out / name)
    one, two = got["1"][STEPS + 1], got["2"][STEPS + 1]
    first = STEPS * 8  # the step's windows: all of them on one rank, rank 0's share of them on two
    assert sorted(i for ids in one[1] for i in ids) == list(range(first, first + 8))
    assert {i for ids in two[1] for i in ids} < set(range(first, first + 8))
    assert one[0] == pytest.approx(two[0], abs=1e-4)


def test_merged_and_adapter_only_exports_equal_the_adapted_model(runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    out, _ = runs
    run = out / "lsa"
    merged = AutoModelForCausalLM.from_pretrained(run / "hf").eval()  # plain transformers
    base = AutoModelForCausalLM.from_pretrained(json.loads((run / "adapter" / "adapter_config.json").read_text())
                                                ["base_model_name_or_path"], config=AutoConfig.from_pretrained(run / "adapter"))
    adapted = PeftModel.from_pretrained(base, run / "adapter").eval()
    ids = torch.randint(0, merged.config.vocab_size, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=0, atol=1e-5)
    # from the checkpoint, without the engine: the same folders
    lsa("export", str(run), "--out", str(tmp_path / "merged"))
    lsa("export", str(run), "--adapter-only", "--out", str(tmp_path / "adapter"))
    a, b = _weights(run / "hf"), _weights(tmp_path / "merged")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    from safetensors.torch import load_file

    a, b = load_file(run / "adapter" / "adapter_model.safetensors"), load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # one number per model: the adapters score as the merged export does
    got = {}
    for name in ("hf", "adapter"):
        lsa("eval", str(run / name), "--tasks", "ppl", "--lengths", "32,64", "--windows", "2", "--out", str(tmp_path / f"e-{name}"),
            "--threads", "1", "--no-progress")
        report = json.loads((tmp_path / f"e-{name}" / "report.json").read_text())["models"][0]
        got[name] = [p["nll"] for p in report["perplexity"]["lengths"]]
    assert got["adapter"] == pytest.approx(got["hf"], abs=1e-5)


@pytest.mark.parametrize("setting, expect", [
    ("model.lora.r=-1", "model.lora.r"),
    ("model.lora.target_modules=[qq_proj]", "['qq_proj'] match no module"),
    ("model.extra_trainable=[nrm]", "'nrm' matches no parameter"),
    ("model.extra_trainable=[lm_head]", "tied to the embeddings"),
    ("model.attn_pattern=s2 --set model.s2_group_ratio=0.3", "does not divide train.seq_len=64"),
    ("model.load_in_4bit=true", "QLoRA needs CUDA and the bitsandbytes package"),
    ("model.path=null --set model.preset=tiny", "adapters train on top of pretrained weights"),
])
def test_bad_adapter_settings_are_one_line_exit_2_and_write_nothing(setting, expect, tmp_path, data_cache_dir,
                                                                     base_model, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    out = tmp_path / "runs"
    args = common(out, data_cache_dir, base_model, "bad") + sets(*setting.split(" --set "))
    code = cli.main(["train", str(recipe), *args, "--nproc", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and expect in err, err
    assert not out.exists()


def test_adapter_only_export_of_a_full_run_is_refused(tmp_path, runs, capsys):
    out, _ = runs
    fake = tmp_path / "full"
    (fake / "checkpoints").mkdir(parents=True)
    import yaml

    cfg = yaml.safe_load((out / "plain" / "config.yaml").read_text())
    cfg["model"]["lora"]["r"] = 0
    (fake / "config.yaml").write_text(yaml.safe_dump(cfg))
    for f in (out / "plain" / "checkpoints").iterdir():  # any complete checkpoint will do
        if f.is_dir() and (f / "COMPLETE").is_file():
            (fake / "checkpoints" / f.name).mkdir()
            (fake / "checkpoints" / f.name / "COMPLETE").write_text("")
    code = cli.main(["export", str(fake), "--adapter-only", "--out", str(tmp_path / "x")])
    assert code == 2 and "trained every parameter" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
