"""The long-short alignment regularizer in a plain Hugging Face `Trainer` (README, "Use the
regularizer in your own training loop"; lsa_ds/align/hf_trainer.py says how it works).

A tiny LLaMA (from a config: hidden 64, 2 layers, byte-level ids, no hub, no tokenizer) trains on
the bytes of Python's own standard library for a few dozen steps on CPU, in well under a minute:

    python examples/hf_trainer.py --steps 40

Trainer prints the logged rows (loss, ce, misalign_*); the script ends with `final loss: <CE + alpha x misalignment>`.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import tempfile

import numpy as np
import torch
import transformers.trainer
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from lsa_ds.align.hf_trainer import AlignmentTrainer, TokenWindows
from lsa_ds.recipe.schema import AlignConfig


def byte_stream(n_tokens: int) -> np.ndarray:
    """Bytes of stdlib source code (the same kind of text the project's demo trains on)."""
    chunks, total = [], 0
    for module in (argparse, inspect, logging, tempfile, transformers.trainer):
        data = np.frombuffer(inspect.getsource(module).encode(), dtype=np.uint8)
        chunks.append(data)
        total += len(data)
        if total >= n_tokens:
            break
    return np.concatenate(chunks)[:n_tokens].astype(np.int64)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps")
    ap.add_argument("--seq-len", type=int, default=64, help="training length L")
    ap.add_argument("--batch", type=int, default=4, help="windows per micro-batch (the forward sees 2x rows)")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--alpha", type=float, default=0.1, help="weight of the misalignment term")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=args.seq_len)
    model = LlamaForCausalLM(config)
    align = AlignConfig(alpha=args.alpha)  # the paper's defaults otherwise: shifts [1, L // 2], SCE
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch,
                                     gradient_accumulation_steps=args.grad_accum, learning_rate=3e-3, warmup_steps=2,
                                     logging_steps=max(1, args.steps // 4), save_strategy="no", report_to=[],
                                     use_cpu=True, seed=0, disable_tqdm=True)
        trainer = AlignmentTrainer(model=model, args=training, seq_len=args.seq_len, align=align)
        windows = TokenWindows(byte_stream(trainer.window_tokens * args.batch * args.grad_accum * args.steps),
                               trainer.window_tokens)
        trainer.train_dataset = windows
        trainer.train()
    final = [r for r in trainer.state.log_history if "loss" in r][-1]  # Trainer printed every logged row
    print(f"final loss: {final['loss']:.4f} (ce {final['ce']:.4f}, misalign_skl {final['misalign_skl']:.5f})")
    return final["loss"]


if __name__ == "__main__":
    main()
