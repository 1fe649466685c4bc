"""The recipe: one pydantic schema, validated from recipe files (strict YAML, `base:`, `--set`:
`lsa_ds.recipe.files`).

Every field is documented where it is declared (the README's recipe reference is generated from
these docstrings by `lsa config-doc`). Loading never has side effects: it reads files and returns a
validated `Recipe` or raises `UserError` with one line naming the file and key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


# --------------------------------------------------------------------------------------- run
class RunConfig(_Section):
    name: str = "run"
    """Run name; the run directory is `<output_dir>/<name>`."""
    output_dir: str = "runs"
    """Parent folder of run directories (relative paths are relative to the working directory)."""
    log_every: int = Field(1, ge=1)
    """Write a metrics row (console, metrics.jsonl, TensorBoard) every this many optimizer steps."""
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])
    """Where rank 0 sends the metrics besides metrics.jsonl: tensorboard (`tb/`), wandb (Weights &
    Biases, `pip install 'lsa-ds[wandb]'`; files in `wandb/`, the project from WANDB_PROJECT or
    `lsa-ds`, WANDB_MODE=offline to stay local; `--resume` continues the same wandb run)."""
    peak_tflops: float | None = Field(None, gt=0)
    """Dense peak TFLOP/s of one accelerator at the training precision, for `mfu`; default: the
    built-in table for the GPU's name (lsa_ds/model/flops.py), none on CPU (mfu is then null)."""


# -------------------------------------------------------------------------------------- data
class RepeatConfig(_Section):
    segment_tokens: int = Field(256, ge=8)
    """Each consecutive segment of this many tokens of a document gets `per_segment` repeated spans."""
    per_segment: int = Field(1, ge=1)
    """Repeated spans per segment: the segment is cut into this many equal parts and each part
    receives one copy of a span from anywhere earlier in the segment (so distances still reach
    across the whole segment, and more of the text is copied)."""
    span_min: int = Field(16, ge=1)
    """Shortest repeated span (tokens)."""
    span_max: int = Field(48, ge=1)
    """Longest repeated span (tokens; at most half a segment's part)."""
    content: Literal["natural", "random"] = "natural"
    """natural: the document's own tokens are repeated; random: the span is first replaced by
    uniformly drawn ordinary tokens, so only copying predicts its second occurrence."""
    alphabet: int | None = Field(None, ge=2)
    """With content: random, draw the span's tokens from this many ordinary tokens only (a fixed
    set chosen by `seed`) instead of the whole ordinary vocabulary: a small alphabet makes matching
    the copy to its source easy to learn for a tiny model (its spans carry ln(alphabet) nats per
    token that only copying can predict)."""
    seed: int = 0
    """Keys the draws (with each document's key)."""

    @model_validator(mode="after")
    def _spans_fit(self) -> RepeatConfig:
        part = self.segment_tokens // self.per_segment
        if self.span_min > self.span_max or 2 * self.span_min > part:
            raise ValueError(f"span_min={self.span_min}, span_max={self.span_max}: need span_min <= span_max and "
                             f"two spans in segment_tokens={self.segment_tokens} / per_segment={self.per_segment}")
        if self.alphabet is not None and self.content != "random":
            raise ValueError(f"alphabet={self.alphabet} needs content: random")
        return self


class SourceConfig(_Section):
    name: str
    """Short unique name; also the source's folder in the token cache."""
    type: Literal["jsonl", "txt", "parquet", "hf", "stdlib"]
    """jsonl: one JSON object per line; txt: a glob, one document per file; parquet: a glob of
    parquet files; hf: a `datasets.save_to_disk` folder, local files `datasets` can read
    (`format` names the builder), or a hub dataset name (`owner/name[@rev]`, no `format`) already
    in the local Hugging Face cache; stdlib: the running Python's standard library sources plus
    `pydoc_data.topics` (every machine has it)."""
    path: str | None = None
    """File, folder or glob (not used by `stdlib`)."""
    weight: float = Field(1.0, gt=0)
    """Blend weight: the share of training windows drawn from this source is weight / sum(weights)."""
    text_field: str = "text"
    """Field holding the document text (jsonl, parquet, hf)."""
    format: str | None = None
    """For `hf` with local files: the `datasets` builder (json, csv, parquet, text)."""
    split: str = "train"
    """For `hf` folders saved as a DatasetDict, and hub datasets: which split to read."""
    holdout: float = Field(0.0, ge=0, lt=1)
    """Fraction of documents kept for evaluation, chosen by a stable hash of the document key
    (relative path for stdlib/txt, file:line for jsonl, row index otherwise). stdlib defaults to 0.05."""
    exclude: list[str] = Field(default_factory=list)
    """Glob patterns (relative to the source root) of files to leave out (txt, stdlib)."""
    max_documents: int | None = Field(None, ge=1)
    """Read at most this many documents (after the holdout split is decided)."""
    repeat: RepeatConfig | None = None
    """Make this source's text reward long-range use: a span of every segment repeated later in it
    (lsa_ds/data/repeats.py). Such a source is derived text: the tokenizer is trained on the other
    sources, so adding or changing it never changes the vocabulary."""

    @model_validator(mode="after")
    def _path_required(self) -> SourceConfig:
        if self.type != "stdlib" and not self.path:
            raise ValueError(f"source '{self.name}' of type {self.type} needs a `path`")
        return self


class TokenizerConfig(_Section):
    type: Literal["sentencepiece", "hf"] = "sentencepiece"
    """sentencepiece: train one on the sources (or load `path` if it is a `.model`); hf: the
    Hugging Face tokenizer at `path` (a folder, or a hub name in the local Hugging Face cache)."""
    path: str | None = None
    """An existing `.model` file, or for `hf` a tokenizer folder or a hub name in the local Hugging Face
    cache; empty means train SentencePiece."""
    vocab_size: int = Field(4096, ge=260)
    """Vocabulary size when training SentencePiece."""
    model_type: Literal["bpe", "unigram"] = "bpe"
    """SentencePiece algorithm when training."""
    train_chars: int = Field(3_000_000, ge=10_000)
    """Characters of training-split text SentencePiece learns from (the first documents in order)."""
    add_bos: bool = True
    """Put BOS before every document (never doubled if the tokenizer already adds one)."""
    add_eos: bool = True
    """Put EOS after every document."""


class DataConfig(_Section):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(name="stdlib", type="stdlib", holdout=0.05)])
    """Where documents come from, blended by weight."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """How text becomes tokens."""
    cache_dir: str = ".cache/lsa-ds"
    """Root of the token cache; each (sources, tokenizer, options) gets its own hashed folder."""
    min_doc_tokens: int = Field(1, ge=1)
    """Documents with fewer tokens (BOS/EOS included) are left out of windows."""
    long_doc_tokens: int | None = Field(None, ge=1)
    """Documents with at least this many tokens count as long (see `long_doc_repeat`)."""
    long_doc_repeat: int = Field(1, ge=1)
    """Upsample long documents: each appears this many times in the window stream per epoch."""
    max_skip_fraction: float = Field(0.01, ge=0, le=1)
    """Malformed records (bad JSON, missing text field, undecodable bytes, empty) are skipped and
    counted; `prepare` fails once skips exceed this fraction of a source's records."""
    batch_docs: int = Field(256, ge=1)
    """Documents tokenized per batch (a batch also ends at 4M characters, so memory stays bounded
    whatever the corpus or document size)."""
    threads: int = Field(2, ge=1)
    """Tokenizer threads."""
    token_dtype: Literal["auto", "uint16", "uint32"] = "auto"
    """Element type of the token shards: auto picks uint16 when the vocabulary fits, else uint32."""

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique, repeated: {sorted(dup)}")
        if not self.sources:
            raise ValueError("at least one source is needed")
        return self


# ----------------------------------------------------------------------------------- align
class AlignConfig(_Section):
    enabled: bool = True
    """false is the paper's baseline: one long view per window, CE only, same windows and steps."""
    alpha: float = Field(0.1, ge=0)
    """Weight of the misalignment term: loss = CE + alpha * mean divergence over aligned pairs."""
    shift_min: int = Field(1, ge=1)
    """Smallest left truncation E of the short view."""
    shift_max: int | None = Field(None, ge=1)
    """Largest left truncation E (default L // 2; at most L - 1). Windows hold L + shift_max + 1
    tokens whether or not alignment is enabled, so both arms see the same data."""
    positions: Literal["overlap", "last", "ratio"] = "overlap"
    """Which aligned pairs count: all overlapping targets, only the last one, or those whose short
    context is at least ceil(min_ratio * L) tokens."""
    min_ratio: float = Field(0.5, gt=0, le=1)
    """For positions=ratio: minimum short-context length as a fraction of L."""
    divergence: Literal["sce", "skl", "js"] = "sce"
    """sce = CE(p,q) + CE(q,p) (the paper's); skl = symmetric KL; js = Jensen-Shannon."""
    detach: Literal["none", "long", "short"] = "none"
    """Treat one view's distribution as a constant in the divergence."""
    ce_views: Literal["both", "long"] = "both"
    """Which views' next-token targets the CE averages over."""
    every: int = Field(1, ge=1)
    """Apply the divergence on every k-th optimizer step only."""
    chunk_tokens: int = Field(1024, ge=1)
    """Tokens per chunk in the chunked losses (no [2B, L, V] logits tensor ever exists)."""


# ----------------------------------------------------------------------------------- train
class TrainConfig(_Section):
    seq_len: int = Field(128, ge=2)
    """Training length L (the extended context)."""
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps to run (one of max_steps / token_budget is required)."""
    token_budget: int | None = Field(None, ge=1)
    """Stop after this many training tokens (long views only); used when max_steps is empty."""
    micro_batch_size: int = Field(1, ge=1)
    """Windows per rank per micro-step (the forward batch is twice this with alignment on)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-steps per optimizer step."""
    seed: int = 1234
    """Seeds model init, data order and the view-shift RNG."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision."""
    grad_clip: float = Field(1.0, ge=0)
    """Gradient clipping by global norm (0 disables)."""
    max_skipped_steps: int = Field(5, ge=1)
    """Abort after this many optimizer steps in a row skipped for a non-finite loss or gradient."""
    dist_timeout_s: int = Field(600, ge=10)
    """Collective timeout: when a rank dies, the others stop within about this many seconds."""
    ds_config: str = "zero3"
    """DeepSpeed template: a name in ds_configs/ (zero3, zero3_offload, zero2) or a JSON path."""
    sequence_parallel: int = Field(1, ge=1)
    """Ulysses sequence parallelism: groups of this many consecutive ranks share every sequence
    (each holds L / N tokens of it); data parallelism is world / N (README "Long sequences")."""


class OptimConfig(_Section):
    lr: float = Field(3e-4, gt=0)
    """Peak learning rate."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate as a fraction of lr (cosine and linear schedules)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    impl: Literal["fused", "foreach", "torch", "deepspeed"] = "fused"
    """fused: torch.optim.AdamW's fused kernel (CPU and CUDA; foreach where a device lacks it);
    foreach: its multi-tensor kernel; torch: its default (a per-tensor loop on CPU); deepspeed:
    DeepSpeed's CPU/GPU Adam (JIT-built on first use; what optimizer offload needs)."""


# ----------------------------------------------------------------------------------- model
class RopeConfig(_Section):
    type: Literal["none", "linear", "yarn", "llama3", "dynamic"] = "none"
    """RoPE scaling: none keeps the model's own RoPE (plain for presets, an earlier extension for
    checkpoints); linear (position interpolation), yarn, llama3. dynamic
    (NTK) is refused for training: it depends on the lengths seen before."""
    factor: float | None = Field(None, gt=0)
    """Scaling factor; default ceil(seq_len / original_max_position_embeddings)."""
    original_max_position_embeddings: int | None = Field(None, ge=1)
    """The pre-extension context length; default the model's max_position_embeddings (for a
    checkpoint already extended, the pre-extension length it records)."""
    theta: float | None = Field(None, gt=0)
    """RoPE base (raise it for ABF); default the model's."""


class LoraSettings(_Section):
    r: int = Field(0, ge=0)
    """LoRA rank; 0 trains every parameter (no adapters). With r > 0 the base weights are frozen
    and only the adapters (and `model.extra_trainable`) train; needs `path` or `init_from`."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator: the update is (alpha / r) · B·A."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapters' input."""
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_DEFAULT_TARGETS))
    """Module names (last component) that get adapters; default the attention and MLP projections
    of LLaMA-class models. LongLoRA's setting is the attention projections only."""


LORA_DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ModelConfig(_Section):
    preset: str | None = "tiny"
    """A built-in architecture: tiny, demo-h64, cpu-h192, tiny-mistral, tiny-qwen2, llama2-7b (lsa_ds/model/config.py
    PRESETS); ignored when `path` or `init_from` is set (set at most one of those two)."""
    path: str | None = None
    """A Hugging Face checkpoint to continue from: a local folder, or a hub name (`owner/name[@rev]`)
    already in the local Hugging Face cache (HF_HOME / HF_HUB_CACHE; never downloaded)."""
    init_from: str | None = None
    """An earlier run directory: continue from its `hf/` export (a model folder or hub name goes in `path`)."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Extra HF config fields for presets (hidden_size, num_hidden_layers, ...)."""
    rope: RopeConfig = Field(default_factory=RopeConfig)
    """RoPE scaling for context extension."""
    attn_impl: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention implementation."""
    activation_checkpointing: bool = False
    """Recompute layer activations in backward to save memory."""
    activation_offload: bool = False
    """Keep the activations saved for backward (the checkpoints) in CPU memory during the forward."""
    tiled_mlp: bool = False
    """Run every MLP over sequence shards of ~hidden_size tokens (DeepSpeed TiledMLP, recomputed in backward)."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """Low-rank adapters through `peft` (LoRA / LongLoRA); off while lora.r is 0."""
    extra_trainable: list[str] = Field(default_factory=list)
    """With adapters: parameters whose name contains one of these trained in full (LongLoRA's
    "+": [embed_tokens, norm]; lm_head when it is not tied to the embeddings)."""
    attn_pattern: Literal["full", "s2"] = "full"
    """Attention while training: full, or LongLoRA's shifted sparse attention (S²-Attn; half the
    heads within groups, half within groups shifted by half a group). Evaluation and the export
    always use full attention."""
    s2_group_ratio: float = Field(0.25, gt=0, le=1)
    """For attn_pattern=s2: group size as a fraction of train.seq_len (LongLoRA: 1/4); the group
    must divide seq_len and be even."""
    load_in_4bit: bool = False
    """QLoRA: load the frozen base in 4-bit NF4 through bitsandbytes (CUDA only; needs lora.r > 0)."""


class CheckpointConfig(_Section):
    every_steps: int | None = Field(None, ge=1)
    """Save every this many optimizer steps (and always at the end)."""
    keep_last: int = Field(2, ge=1)
    """Keep this many newest complete checkpoints."""


class EvalConfig(_Section):
    every_steps: int | None = Field(None, ge=1)
    """Evaluate every this many steps (and at the end): held-out loss and perplexity at `lengths`
    (measured as `lsa eval` does: the same final tokens at every length, on windows spread over the
    eval split), and the long-short misalignment of held-out windows for every arm (the cheap
    in-training subset of `lsa eval`)."""
    windows: int = Field(32, ge=1)
    """Held-out windows per evaluation, split across ranks: the same windows whatever the batch
    size, so runs with different batch shapes are compared on the same text (`lsa eval --windows`
    with this number reproduces the last row's loss@N)."""
    lengths: list[int] = Field(default_factory=list)
    """Context lengths at which held-out loss is measured (default: 1x and 2x train.seq_len); the
    final min(lengths)/2 tokens of each window are scored at every length."""


class Recipe(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    """Naming and logging."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Sources, tokenizer, token cache."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Architecture, weights, RoPE scaling."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Length, batch, steps, precision."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """AdamW and the learning-rate schedule."""
    align: AlignConfig = Field(default_factory=AlignConfig)
    """The long-short alignment regularizer."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoint cadence and retention."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation during training."""

    @model_validator(mode="after")
    def _lengths(self) -> Recipe:
        L = self.train.seq_len
        if self.align.shift_max is not None and self.align.shift_max > L - 1:
            raise ValueError(f"align.shift_max={self.align.shift_max} must be at most train.seq_len - 1 = {L - 1}")
        if self.align.shift_min > self.shift_max:
            raise ValueError(f"align.shift_min={self.align.shift_min} exceeds align.shift_max={self.shift_max}")
        return self

    @property
    def shift_max(self) -> int:
        """E_max: the configured shift_max, or L // 2."""
        return self.align.shift_max if self.align.shift_max is not None else max(1, self.train.seq_len // 2)

    @property
    def window_tokens(self) -> int:
        """Tokens per raw window: L + E_max + 1 (docs/design.md, "The method")."""
        return self.train.seq_len + self.shift_max + 1

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (what runs/<name>/config.yaml holds)."""
    return recipe.model_dump(mode="json")


def default_rope_factor(seq_len: int, original_max: int) -> float:
    """ceil(L / original context), at least 1."""
    return float(max(1, math.ceil(seq_len / original_max)))
