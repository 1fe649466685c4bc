"""The trainer's cheap evaluation and models that bring a Hugging Face tokenizer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lsa_ds import cli
from lsa_ds.eval import hf_logits_fn
from lsa_ds.eval.training import cheap_eval


def test_cheap_eval_returns_a_flat_metrics_row(prepared, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    recipe, cache = prepared
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=cache.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)).eval()
    L = recipe.train.seq_len
    row = cheap_eval(hf_logits_fn(model), recipe, cache, windows=3, samples=4)
    assert set(row) == {f"ppl@{L}", f"nll@{L}", f"ppl@{2 * L}", f"nll@{2 * L}", "misalign_sce", "misalign_sce_lo",
                        "misalign_sce_hi", "misalign_skl", "misalign_skl_lo", "misalign_skl_hi"}
    assert row[f"ppl@{L}"] == pytest.approx(math.exp(row[f"nll@{L}"]))
    assert row["misalign_sce_lo"] <= row["misalign_sce"] <= row["misalign_sce_hi"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in row.values())


def test_a_model_with_a_hugging_face_tokenizer_is_evaluated_with_it(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = [("The grass is green. The sky is blue. " * 20) + f"line {i} of some text about keys." for i in range(50)]
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    folder = tmp_path / "hf-tok-model"
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    out = tmp_path / "out"
    assert cli.main(["eval", str(folder), "--out", str(out), "--tasks", "ppl,misalign", "--lengths", "16,32",
                     "--windows", "2", "--misalign-samples", "3", "--misalign-variants", "last", "--no-progress"]) == 0
    (m,) = json.loads((out / "report.json").read_text())["models"]
    assert m["tokenizer"]["kind"] == "hf" and m["tokenizer"]["vocab_size"] == len(tok) and m["train_len"] == 32
    assert [p["length"] for p in m["perplexity"]["lengths"]] == [16, 32]
