"""The regularizer in a Hugging Face `Trainer` (lsa_ds/align/hf_trainer.py) is the recipe's: loss and
gradients equal the engine's call sequence (`LMWithLoss` forward, `micro_step_loss`, DeepSpeed's
1/grad_accum) on the same windows and shifts, for one micro-step and for a real `Trainer.train()`
step with gradient accumulation; one decoder forward of [2B, L] rows and no [2B, L, V] logits;
through a DDP-like wrapper and PEFT; the package docstring's loop runs; the example trains."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback, TrainingArguments

import lsa_ds.align
from lsa_ds.align.hf_trainer import AlignmentTrainer, TokenWindows, decoder_hidden
from lsa_ds.align.objective import loss_scale, micro_step_loss, step_means
from lsa_ds.align.views import IGNORE, micro_views
from lsa_ds.recipe import load_recipe
from lsa_ds.train.engine import LMWithLoss
from tests.probes import LargestOutput

ROOT = Path(__file__).resolve().parents[2]
L, V, B = 32, 97, 2
TOL = dict(rtol=1e-5, atol=1e-5)
MEASURED: dict[str, float] = {}  # max |difference| per test, printed with -s (the report quotes them)


@pytest.fixture(autouse=True, scope="module")
def print_measured():
    """The max differences, printed with -s (tests/align/conftest.py runs these on one thread)."""
    yield
    print("\nmax differences:", {k: f"{v:.2e}" for k, v in MEASURED.items()})


def tiny_lm(tie: bool = False, vocab: int = V) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=2 * L, tie_word_embeddings=tie)
    cfg._attn_implementation = "eager"
    return LlamaForCausalLM(cfg)


def recipe_of(*sets: str):
    return load_recipe(None, [f"train.seq_len={L}", "align.chunk_tokens=24", "train.seed=7", *sets])


def trainer_for(recipe, model, tmp_path, **args) -> AlignmentTrainer:
    training = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no",
                                 disable_tqdm=True, **args)
    return AlignmentTrainer(model=model, args=training, seq_len=recipe.train.seq_len, align=recipe.align,
                            shift_seed=recipe.train.seed)


def windows_of(n: int, recipe, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, (n, recipe.window_tokens))


def recipe_step(recipe, lm, ids: list[list[int]], windows: list[np.ndarray]):
    """The engine's train_step without DeepSpeed: views per micro-batch, the step's global counts,
    `micro_step_loss(..., scale=world * grad_accum)` per micro-step, gradients divided by grad_accum
    (what DeepSpeed's backward does). Returns (the step's loss as logged, gradients)."""
    module = LMWithLoss(lm, recipe)
    mbs = [{k: torch.as_tensor(x) for k, x in micro_views(recipe, i, w).items()} for i, w in zip(ids, windows)]
    tokens = sum(int((mb["labels"] != IGNORE).sum()) for mb in mbs)
    pairs = sum(int(mb["pair_mask"].sum()) for mb in mbs if "pair_mask" in mb)
    scale = loss_scale(1, len(mbs))
    totals = dict.fromkeys(("ce_sum", "div_sum", "sce_sum", "skl_sum", "gap_sum"), 0.0)
    lm.zero_grad()
    for mb in mbs:
        out = module(**mb)
        (micro_step_loss(out, recipe.align.alpha, tokens, pairs, scale, with_pairs="pair_mask" in mb)
         / len(mbs)).backward()
        for k in totals:
            totals[k] += float(out[k].detach())
    grads = [p.grad.clone() for p in lm.parameters()]
    return step_means(totals, recipe.align.alpha, tokens, pairs)["loss"], grads


def assert_same_grads(name: str, got, ref, loss=None, ref_loss=None):
    diffs = [float((a - b).abs().max()) for a, b in zip(got, ref)]
    if loss is not None:
        diffs.append(abs(loss - ref_loss))
        assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-5), name
    MEASURED[name] = max(diffs)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **TOL)


KNOBS = [[], ["align.divergence=skl", "align.positions=last", "align.detach=long"],
         ["align.divergence=js", "align.positions=ratio", "align.ce_views=long"], ["align.enabled=false"]]


@pytest.mark.parametrize("sets", KNOBS, ids=["defaults", "skl-last-detach", "js-ratio-long", "baseline"])
def test_one_micro_step_equals_the_recipe(sets, tmp_path):
    recipe = recipe_of(*sets)
    ids, windows = [3, 11], windows_of(B, recipe)
    ref_loss, ref = recipe_step(recipe, tiny_lm(), [ids], [windows])

    lm = tiny_lm()
    trainer = trainer_for(recipe, lm, tmp_path)
    loss = trainer.compute_loss(lm, {"input_ids": torch.as_tensor(windows), "sample_id": torch.tensor(ids)})
    loss.backward()
    assert_same_grads(f"micro-step {'/'.join(sets) or 'defaults'}", [p.grad for p in lm.parameters()], ref,
                      float(loss), ref_loss)


class GradsAtStep(TrainerCallback):
    """The accumulated gradients just before the optimizer applies them (after clipping, which is off)."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = [p.grad.clone() for p in model.parameters()]


def test_a_trainer_step_with_grad_accum_equals_the_recipe_step(tmp_path):
    """Two micro-batches of two windows, pair counts that differ between them: Trainer's step
    (shuffled windows, `StepCounts` as num_items_in_batch) has the recipe's whole-step mean."""
    recipe = recipe_of("align.alpha=0.3")
    windows = windows_of(4, recipe, seed=1)
    ref_loss, ref = recipe_step(recipe, tiny_lm(), [[0, 1], [2, 3]], [windows[:2], windows[2:]])

    lm, grads = tiny_lm(), GradsAtStep()
    trainer = trainer_for(recipe, lm, tmp_path, max_steps=1, per_device_train_batch_size=2,
                          gradient_accumulation_steps=2, max_grad_norm=0.0, logging_steps=1, seed=5)
    trainer.train_dataset = TokenWindows(windows.reshape(-1), recipe.window_tokens)
    trainer.add_callback(grads)
    trainer.train()
    logged = next(r for r in trainer.state.log_history if "loss" in r)
    assert {"ce", "misalign", "misalign_sce", "misalign_skl", "ce_gap"} <= set(logged)
    # the logged loss: the micro-steps' shares summed, i.e. the step's mean loss as the recipe reports it
    assert_same_grads("Trainer step, grad_accum 2", grads.grads, ref, logged["loss"], ref_loss)


def test_one_forward_and_no_full_logits(tmp_path):
    recipe = recipe_of("align.chunk_tokens=16")
    vocab = 2048  # the full logits (2B * L * V) dwarf the attention scores and the tied weight (V * 32)
    lm = tiny_lm(tie=True, vocab=vocab)
    trainer = trainer_for(recipe, lm, tmp_path)
    body_calls, head_rows = [], []
    lm.model.register_forward_hook(lambda m, a, kw, out: body_calls.append(tuple(kw["input_ids"].shape)),
                                   with_kwargs=True)
    lm.lm_head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].reshape(-1, 32).shape[0]))
    batch = {"input_ids": torch.as_tensor(windows_of(B, recipe)), "sample_id": torch.tensor([0, 1])}
    with LargestOutput() as mode:
        trainer.compute_loss(lm, batch).backward()
    assert body_calls == [(2 * B, L)]  # one decoder forward over [A; S], none again in backward
    assert head_rows and max(head_rows) <= 16 < 2 * B * L  # the output layer only ever sees a chunk
    assert mode.largest < 2 * B * L * vocab // 2, mode.largest  # the largest is the tied weight's gradient
    assert all(p.grad is not None for p in lm.parameters())
    with LargestOutput() as naive:  # the probe does see the logits of a plain forward
        lm(input_ids=torch.zeros(2 * B, L, dtype=torch.long)).logits.sum().backward()
    assert naive.largest >= 2 * B * L * vocab


class Wrapper(torch.nn.Module):
    """Stands in for DDP / a DeepSpeed engine: the model is `.module` and the forward must go through it."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, **kwargs):
        self.calls += 1
        return self.module(**kwargs)


def test_through_a_wrapper_equals_the_direct_body_call(tmp_path):
    recipe = recipe_of()
    lm = tiny_lm()
    ids = torch.randint(0, V, (2 * B, L))
    pos = torch.arange(L).expand(2 * B, L)
    torch.testing.assert_close(decoder_hidden(lm, ids, pos, through_wrapper=True), decoder_hidden(lm, ids, pos),
                               rtol=0, atol=0)
    batch = {"input_ids": torch.as_tensor(windows_of(B, recipe)), "sample_id": torch.tensor([4, 9])}
    direct = trainer_for(recipe, lm, tmp_path).compute_loss(lm, batch)
    direct.backward()
    ref = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    wrapped = Wrapper(lm)
    loss = trainer_for(recipe, lm, tmp_path).compute_loss(wrapped, batch)
    loss.backward()
    assert wrapped.calls == 1
    assert_same_grads("through a wrapper", [p.grad for p in lm.parameters()], ref, float(loss), float(direct))


def test_peft_model_trains_its_adapters_with_the_recipe_loss(tmp_path):
    peft = pytest.importorskip("peft")
    recipe = recipe_of()
    model = peft.get_peft_model(tiny_lm(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    batch = {"input_ids": torch.as_tensor(windows_of(B, recipe)), "sample_id": torch.tensor([0, 1])}
    ref = LMWithLoss(model, recipe)(**{k: torch.as_tensor(x) for k, x in
                                       micro_views(recipe, [0, 1], batch["input_ids"].numpy()).items()})
    ref_loss = micro_step_loss(ref, recipe.align.alpha, float(ref["ce_count"]), float(ref["pair_count"]), 1, True)
    loss = trainer_for(recipe, model, tmp_path).compute_loss(model, batch)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)


def test_align_every_drops_the_pairs_on_the_steps_it_skips(tmp_path):
    """align.every=2: optimizer step 1 is CE over both views (the pairs dropped), step 2 adds the divergence."""
    recipe = recipe_of("align.every=2", "align.alpha=0.5")
    lm = tiny_lm()
    trainer = trainer_for(recipe, lm, tmp_path)
    batch = {"input_ids": torch.as_tensor(windows_of(B, recipe)), "sample_id": torch.tensor([0, 1])}
    skipped, sums = trainer.compute_loss(lm, batch, return_outputs=True)
    assert float(sums["pair_count"]) == 0 and float(sums["ce_count"]) == 2 * B * L
    assert float(skipped) == pytest.approx(float(sums["ce_sum"] / sums["ce_count"]), rel=1e-6)
    trainer.state.global_step = 1
    applied, sums = trainer.compute_loss(lm, batch, return_outputs=True)
    assert float(sums["pair_count"]) > 0
    expected = sums["ce_sum"] / sums["ce_count"] + 0.5 * sums["div_sum"] / sums["pair_count"]
    assert float(applied) == pytest.approx(float(expected), rel=1e-6) and float(applied) > float(skipped)


def test_missing_sample_ids_and_short_windows_are_explained(tmp_path):
    recipe = recipe_of()
    lm = tiny_lm()
    trainer = trainer_for(recipe, lm, tmp_path)
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        trainer.compute_loss(lm, {"input_ids": torch.zeros(2, recipe.window_tokens, dtype=torch.long)})
    with pytest.raises(ValueError, match=re.escape(f"L + E_max + 1 = {recipe.window_tokens}")):
        trainer.compute_loss(lm, {"input_ids": torch.zeros(2, L + 1, dtype=torch.long), "sample_id": torch.tensor([0, 1])})


def test_the_package_docstring_loop_runs_and_is_the_recipe():
    """The block in `lsa_ds.align`'s docstring, run as written, equals the engine's micro-step."""
    doc = lsa_ds.align.__doc__
    block = doc[doc.index("    import torch\n"):doc.index("    loss.backward()\n") + len("    loss.backward()\n")]
    recipe = recipe_of()
    windows, ids = windows_of(B, recipe), [2, 5]
    scope = {"model": tiny_lm(), "windows": windows, "ids": ids, "L": L, "seed": recipe.train.seed}
    exec(textwrap.dedent(block), scope)
    ref_loss, ref = recipe_step(recipe, tiny_lm(), [ids], [windows])
    assert_same_grads("package docstring loop", [p.grad for p in scope["model"].parameters()], ref,
                      float(scope["loss"]), ref_loss)


def test_the_example_trains():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_trainer.py"), "--steps", "8"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = re.search(r"^final loss: (\d+\.\d+)", proc.stdout, re.M)
    assert final, proc.stdout[-2000:]
    uniform = math.log(256) * (1 + 0.1 * 2)  # CE and 0.1 x SCE (2 x entropy) of uniform predictions
    assert float(final.group(1)) < uniform - 0.3, proc.stdout[-2000:]
