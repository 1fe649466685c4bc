"""Model FLOPs of a training step, and the accelerators' peak rates MFU is measured against.

One formula (`step_flops`), stated here and in the README ("What each logged number means"). A
multiply-add counts 2 FLOPs; only matrix products are counted (norms, softmax, RoPE, activations
and the losses' elementwise math are not: they are memory-bound and a few percent at most). Per
token of a row of length L, one decoder layer's forward costs, with h = hidden_size, d = head_dim,
n_q / n_kv = attention / key-value heads (GQA), I = intermediate_size:

    projections  2·h·d·(2·n_q + 2·n_kv)     q and o (n_q·d wide), k and v (n_kv·d wide)
    gated MLP    2·3·h·I                    gate, up, down
    attention    2·2·n_q·d·S                QK^T and AV over S keys

and the LM head 2·h·V per token (V = vocab_size; it projects every position of every row, as the
chunked losses do). S = L: the causal mask is counted in full, as torch's FLOP counter counts a
masked eager attention and as the PaLM paper's MFU does; S²-Attn attends within groups, S = G.
Training is forward + backward = 3 × forward (backward computes the gradients of both the inputs
and the weights: 2 × forward). That is `model` (what MFU is measured with). `hardware` adds what is
computed again: under activation checkpointing the decoder layers' forward once more, but for each
layer's down_proj (torch's non-reentrant checkpoint stops recomputing once every tensor backward
needs exists again, and down_proj's output is not one; inside TiledMLP it is recomputed); under
TiledMLP the MLP's forward once more; and the LM head for every logit row the chunked losses
recompute in backward (all chunks but the last, `head_recompute_rows`). tests/model/test_flops.py
checks both counts against torch's FLOP counter, exactly.

Pure arithmetic on the HF config's numbers: no torch, nothing to build.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class StepFlops:
    model: float
    """Forward + backward model FLOPs (no recompute): the numerator of MFU."""
    hardware: float
    """`model` plus the recomputed forwards (activation checkpointing, TiledMLP, loss chunks)."""


def _dims(config) -> tuple[int, int, int, int, int, int, int]:
    """(layers, h, d, n_q, n_kv, I, V) of an HF config (or any object with its field names)."""
    h, n_q = config.hidden_size, config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_q
    d = getattr(config, "head_dim", None) or h // n_q
    return config.num_hidden_layers, h, d, n_q, n_kv, config.intermediate_size, config.vocab_size


def step_flops(config, rows: int, seq_len: int, *, recompute: bool = False, tiled_mlp: bool = False,
               head_recompute_rows: int = 0, attn_span: int | None = None) -> StepFlops:
    """FLOPs of one training step over `rows` sequences of `seq_len` tokens (every micro-batch of
    every data-parallel rank; with alignment on, a window is two rows: long and short view).

    recompute: activation checkpointing (one more forward of every decoder layer); tiled_mlp: one
    more MLP forward; head_recompute_rows: logit rows the LM head projects again in backward;
    attn_span: keys each query attends to (S²-Attn's group), default seq_len."""
    layers, h, d, n_q, n_kv, inter, vocab = _dims(config)
    tokens = rows * seq_len
    span = attn_span or seq_len
    proj = 2 * h * d * (2 * n_q + 2 * n_kv)
    mlp = 2 * 3 * h * inter
    attn = 2 * 2 * n_q * d * span
    head = 2 * h * vocab
    layer_fwd = tokens * layers * (proj + mlp + attn)
    forward = layer_fwd + tokens * head
    model = 3 * forward
    down = 0 if tiled_mlp else tokens * layers * 2 * h * inter  # checkpointing's early stop (module doc)
    extra = (layer_fwd - down if recompute else 0) + (tokens * layers * mlp if tiled_mlp else 0)
    extra += head_recompute_rows * head
    return StepFlops(model=float(model), hardware=float(model + extra))


def head_recompute_rows(rows: int, seq_len: int, chunk_tokens: int, paired: bool) -> int:
    """Logit rows of one micro-batch the chunked losses project twice (lsa_ds/align/losses.py: every
    chunk but the last is recomputed in backward). CE only, chunks hold `chunk_tokens` rows; with
    pairs, chunk_tokens // 2 (long, short) pairs."""
    per_chunk = max(1, chunk_tokens // 2) * 2 if paired else chunk_tokens
    return (math.ceil(rows * seq_len / per_chunk) - 1) * per_chunk


# Dense (no sparsity) peak TFLOP/s of one device for 16-bit matrix math, from the vendors' data
# sheets: NVIDIA A100 (312), H100 SXM (989.4) / PCIe (756.5) / NVL (835), H200 (989.4), L40S
# (362.05), L4 (121), A10 (125), A40 (149.7), V100 (125, fp16 only), T4 (65, fp16 only); AMD
# Instinct MI250X (383), MI300X (1307.4). The data sheets print the sparse figure (2×) first, with
# an asterisk. Patterns match torch.cuda.get_device_name(); the first that matches wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"\bH100\b.*\bPCIe\b", {"bf16": 756.5, "fp16": 756.5}),
    (r"\bH100\b.*\bNVL\b", {"bf16": 835.0, "fp16": 835.0}),
    (r"\bH100\b|\bGH200\b", {"bf16": 989.4, "fp16": 989.4}),
    (r"\bH200\b", {"bf16": 989.4, "fp16": 989.4}),
    (r"\bA100\b", {"bf16": 312.0, "fp16": 312.0}),
    (r"\bL40S\b", {"bf16": 362.05, "fp16": 362.05}),
    (r"\bL4\b", {"bf16": 121.0, "fp16": 121.0}),
    (r"\bA10\b", {"bf16": 125.0, "fp16": 125.0}),
    (r"\bA40\b", {"bf16": 149.7, "fp16": 149.7}),
    (r"\bV100\b", {"fp16": 125.0}),
    (r"\bT4\b", {"fp16": 65.0}),
    (r"\bMI250X\b", {"bf16": 383.0, "fp16": 383.0}),
    (r"\bMI300X\b", {"bf16": 1307.4, "fp16": 1307.4}),
)


def peak_tflops(device_name: str | None, precision: str, override: float | None = None) -> float | None:
    """The peak MFU divides by: `override` (run.peak_tflops) when given, else the table's entry for
    this device and precision; None when unknown (a CPU, an unlisted device, fp32 — whose peak
    depends on whether TF32 is allowed)."""
    if override is not None:
        return override
    if not device_name:
        return None
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peaks.get(precision)
    return None
