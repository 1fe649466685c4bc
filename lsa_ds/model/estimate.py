"""Per-rank memory of a training step, estimated from the recipe, the HF config and the resolved
DeepSpeed config alone: no weights, no DeepSpeed import, any model size on any machine
(`lsa train RECIPE --dry-run` prints it).

Model states follow DeepSpeed's own estimators (deepspeed 0.19.8,
`runtime/zero/stage3.estimate_zero3_model_states_mem_needs` and
`runtime/zero/stage_1_and_2.estimate_zero2_model_states_mem_needs`): in bf16/fp16 every parameter
has a 2-byte copy and every trained one 16 more bytes (4 fp32 gradient, 4 fp32 master weight, 8
Adam moments: "18 = 2 + 16" per parameter there), divided by the ranks per ZeRO stage, plus
`4 × largest layer` under stage 3 (its gathered weight and gradient). fp32 training has no master
copy (ZeRO-3 then uses the parameters themselves: `_create_fp32_partitions`). `offload_optimizer`
moves the 16 bytes (12 in fp32) to host memory, `offload_param` the parameters' copy as well.
Adapters: only trained parameters have gradients and optimizer states.

Activations: one forward of `[rows, L / SP]` tokens per rank (rows = 2 × micro_batch_size with
alignment on: long and short views in one forward; micro_batch_size without), per decoder layer
what LLaMA-class layers save for backward (module doc of `saved_per_token`), the chunked losses'
buffers (`align.chunk_tokens` logit rows at a time) and the backward's working set.

What it cannot know is named in `UNKNOWN`, and printed with the figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lsa_ds.recipe import Recipe
from lsa_ds.recipe.ds_config import zero_stage

GIB, MIB = 2**30, 2**20

UNKNOWN = (
    "allocator fragmentation and cache (PyTorch's caching allocator reserves more than it hands out; "
    "glibc malloc on CPU keeps freed pages)",
    "communication buffers (NCCL on GPUs, gloo on CPU; Ulysses all-to-alls and the pair exchange under SP)",
    "the CUDA context and kernels' workspaces (cuBLAS, flash-attention): about 0.5-1 GiB per GPU",
    "the runtime base of the process (Python, torch, DeepSpeed, transformers loaded; "
    "on CPU about 0.5-0.7 GiB of RSS)",
)
"""Printed beside every estimate: real, and outside what a formula over the configs can know."""

BLOCK_ELEMS = {"gpu": 1 << 26, "cpu": 1 << 21}
"""Elements per fp32 block of the losses' math (lsa_ds/align/losses._row_blocks)."""


@dataclass(frozen=True)
class Params:
    """Parameter counts from the HF config (tied weights once)."""

    total: int
    trainable: int
    largest_layer: int
    """The largest module's own parameters (DeepSpeed's `model_to_params`): embedding or LM head."""


@dataclass
class Item:
    name: str
    bytes: float
    where: str  # "device" or "host"
    note: str = ""


@dataclass
class MemoryEstimate:
    params: Params
    world: int
    target: str
    items: list[Item] = field(default_factory=list)
    unknown: tuple[str, ...] = UNKNOWN
    deepspeed: tuple[float, float] | None = None
    """(CPU bytes per node, GPU bytes per GPU) by DeepSpeed's own estimator, where it applies."""

    def total(self, where: str = "device", group: str | None = None) -> float:
        return sum(i.bytes for i in self.items if i.where == where and (group is None or i.name.startswith(group)))

    def to_dict(self) -> dict:
        return {"per_rank": True, "target": self.target, "world": self.world, "params": asdict(self.params),
                "device_bytes": self.total("device"), "host_bytes": self.total("host"),
                "model_states_bytes": self.total("device", "model states"),
                "activations_bytes": self.total("device", "activations"),
                "items": [asdict(i) for i in self.items], "not_included": list(self.unknown),
                "deepspeed_estimator": None if self.deepspeed is None else
                {"cpu_bytes_per_node": self.deepspeed[0], "gpu_bytes_per_gpu": self.deepspeed[1]}}

    def render(self) -> str:
        """Comment lines (`# ...`), so the dry run's YAML and JSON stay readable and parseable."""
        p = self.params
        lines = [f"# Memory estimate per rank ({self.world} ranks, for a {self.target}; lsa_ds/model/estimate.py)",
                 f"#   parameters {p.total / 1e6:,.1f} M, trained {p.trainable / 1e6:,.1f} M, "
                 f"largest layer {p.largest_layer / 1e6:,.1f} M"]
        for i in self.items:
            lines.append(f"#   {i.where:6s} {_size(i.bytes):>10s}  {i.name}" + (f"  ({i.note})" if i.note else ""))
        lines.append(f"#   device total {_size(self.total('device'))} per rank"
                     + (f"; host {_size(self.total('host'))} per rank" if self.total("host") else ""))
        if self.deepspeed:
            lines.append(f"#   DeepSpeed's own estimator, model states only: {_size(self.deepspeed[1])} per GPU, "
                         f"{_size(self.deepspeed[0])} CPU per node (its 1.5x buffer factor on CPU)")
        lines.append("#   not included (add them; they cannot be known from the configs):")
        lines += [f"#     - {u}" for u in self.unknown]
        return "\n".join(lines)


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


# ------------------------------------------------------------------------------- parameters
def _shape(config) -> tuple[int, int, int, int, int, int, int]:
    h, n_q = config.hidden_size, config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_q
    d = getattr(config, "head_dim", None) or h // n_q
    return config.num_hidden_layers, h, d, n_q, n_kv, config.intermediate_size, config.vocab_size


def named_shapes(config) -> list[tuple[str, int, int]]:
    """(module name, in, out) of every linear layer and (name, numel, 0) of every other parameter
    of a LLaMA-class HF model (llama, mistral, qwen2), named as transformers names them; tied
    output layer once (under the embedding). Biases are ("<module>.bias", numel, -1)."""
    layers, h, d, n_q, n_kv, inter, vocab = _shape(config)
    qwen = config.model_type == "qwen2"
    qkv_bias = qwen or bool(getattr(config, "attention_bias", False))
    o_bias = not qwen and bool(getattr(config, "attention_bias", False))
    mlp_bias = bool(getattr(config, "mlp_bias", False))
    out = [("model.embed_tokens", vocab * h, 0)]
    for i in range(layers):
        p = f"model.layers.{i}"
        for name, fan_in, fan_out, bias in (("self_attn.q_proj", h, n_q * d, qkv_bias),
                                            ("self_attn.k_proj", h, n_kv * d, qkv_bias),
                                            ("self_attn.v_proj", h, n_kv * d, qkv_bias),
                                            ("self_attn.o_proj", n_q * d, h, o_bias),
                                            ("mlp.gate_proj", h, inter, mlp_bias), ("mlp.up_proj", h, inter, mlp_bias),
                                            ("mlp.down_proj", inter, h, mlp_bias)):
            out.append((f"{p}.{name}", fan_in, fan_out))
            if bias:
                out.append((f"{p}.{name}.bias", fan_out, -1))
        out += [(f"{p}.input_layernorm", h, 0), (f"{p}.post_attention_layernorm", h, 0)]
    out.append(("model.norm", h, 0))
    if not getattr(config, "tie_word_embeddings", False):
        out.append(("lm_head", h, vocab))
    return out


def param_counts(config, recipe: Recipe | None = None) -> Params:
    """Total, trained and largest-layer parameters; with `model.lora.r` > 0 the adapters (r × (in +
    out) per targeted linear layer) and `model.extra_trainable` train, the base is frozen."""
    lora = recipe.model.lora if recipe is not None else None
    extra = recipe.model.extra_trainable if recipe is not None else []
    total = trainable = largest = 0
    for name, a, b in named_shapes(config):
        numel = a * b if b > 0 else a
        own = numel
        if lora is not None and lora.r and b > 0 and name != "model.embed_tokens" \
                and any(name == t or name.endswith("." + t) for t in lora.target_modules):
            adapter = lora.r * (a + b)
            total, trainable, own = total + adapter, trainable + adapter, own + adapter
        total += numel
        if lora is None or not lora.r or any(pattern in name and "lora_" not in name for pattern in extra):
            trainable += numel
        largest = max(largest, own)
    return Params(total=total, trainable=trainable, largest_layer=largest)


# ------------------------------------------------------------------------------ model states
def _offload(zero: dict, key: str) -> bool:
    return (zero.get(key) or {}).get("device", "none") in ("cpu", "nvme")


def model_state_items(params: Params, ds_config: dict, precision: str, world: int, dp: int,
                      target: str = "gpu") -> list[Item]:
    """Parameters, gradients, master weights and optimizer states per rank, and DeepSpeed's buffers."""
    stage = zero_stage(ds_config)
    zero = ds_config.get("zero_optimization") or {}
    P, T, big = params.total, params.trainable, params.largest_layer
    b = 2 if precision in ("bf16", "fp16") else 4
    grad_b, master_b = (4, 4) if b == 2 else (4, 0)  # DeepSpeed's 18 = 2 + 4 + 4 + 8 (module doc)
    # ZeRO-3 partitions over every rank (SP ranks included); stages 1-2 over the data-parallel ones
    shard = world if stage == 3 else dp
    p_div = shard if stage == 3 else 1
    g_div = shard if stage >= 2 else 1
    o_div = shard if stage >= 1 else 1
    opt_where = "host" if _offload(zero, "offload_optimizer") else "device"
    par_where = "host" if _offload(zero, "offload_param") else "device"
    items = [Item("model states: parameters", b * P / p_div, par_where, f"{b} B x {P:,} / {p_div}"),
             Item("model states: gradients", grad_b * T / g_div, opt_where, f"{grad_b} B x {T:,} trained / {g_div}")]
    if stage < 3 and b == 2:  # DeepSpeed's "2_grads_16bit" (stage 3 counts them within its 18)
        items.append(Item("model states: 16-bit gradients", 2 * T / g_div, "device", f"2 B x {T:,} trained / {g_div}"))
    if master_b:
        items.append(Item("model states: fp32 master weights", master_b * T / o_div, opt_where,
                          f"4 B x {T:,} trained / {o_div}"))
    items.append(Item("model states: Adam moments", 8 * T / o_div, opt_where, f"8 B x {T:,} trained / {o_div}"))
    bucket = float(zero.get("reduce_bucket_size", 5e8 if stage else 0) or 0)
    touched = lambda n: n if target == "gpu" else min(n, T)  # noqa: E731 (CPU: untouched pages are not resident)
    if stage == 3:
        items.append(Item("model states: largest layer gathered + its gradient", 2 * b * big, "device",
                          f"DeepSpeed's 4 x largest layer in 16-bit: {big:,} params"))
        max_live = float(zero.get("stage3_max_live_parameters", 1e9))
        live = min(P, max_live)
        if live > big:
            items.append(Item("buffers: gathered parameters", b * (live - big), "device",
                              f"up to min(parameters, stage3_max_live_parameters={max_live:.3g}) in use or kept "
                              f"for reuse"))
    if stage >= 1 and zero.get("contiguous_gradients", True) and bucket:
        items.append(Item("buffers: gradient reduce bucket", b * touched(bucket), "device",
                          f"reduce_bucket_size={bucket:.3g} elements"))
    return items


def deepspeed_formula(params: Params, ds_config: dict, world: int, nodes: int = 1) -> tuple[float, float] | None:
    """(CPU bytes per node, GPU bytes per GPU) by DeepSpeed's own estimator for this ZeRO stage and
    offload, copied from deepspeed 0.19.8 (module doc; zero_init=True, additional_buffer_factor 1.5).
    Mixed precision, every parameter trained; None for other stages."""
    zero = ds_config.get("zero_optimization") or {}
    stage, P, big, per_node = zero_stage(ds_config), params.total, params.largest_layer, max(1, world // nodes)
    cpu_off, par_off, factor = _offload(zero, "offload_optimizer"), _offload(zero, "offload_param"), 1.5
    if stage == 3:  # estimate_zero3_model_states_mem_needs
        largest = 4 * big
        if cpu_off and par_off:
            return P * 18 / nodes * factor, largest
        if cpu_off:
            return P * 16 / nodes * factor, largest + int(2 * P / world)
        return big * 4 * per_node * factor, largest + int(18 * P / world)
    if stage == 2:  # estimate_zero2_model_states_mem_needs
        if cpu_off:
            return P * max(4 * world, 16) * factor, 2 * P
        return P * 4 * per_node * factor, 2 * P + int(18 * P / world)
    return None


# ------------------------------------------------------------------------------- activations
def saved_per_token(config, precision: str, attn_impl: str, keys: int, tiled_mlp: bool) -> dict[str, float]:
    """Bytes one decoder layer saves for backward per token (b = 2 in bf16/fp16, 4 in fp32):

    - each RMSNorm: its input upcast to fp32 (4h), the normalised value cast back (b h) and its
      output, the next linear layers' input (b h);
    - attention: q and k after RoPE, v, the attention output and its contiguous copy (o_proj's
      input): b (3 n_q d + 2 n_kv d), plus the fp32 logsumexp (4 n_q) for SDPA and flash-attention
      (O(L) memory); eager repeats k and v to every head and keeps the fp32 softmax and its 16-bit
      cast: (4 + b) n_q · keys per token (O(L^2) per row);
    - the gated MLP: gate and up outputs, SiLU(gate), their product (4 b I); none with tiled_mlp
      (TiledMLP saves only its input, already counted, and recomputes shards in backward).
    """
    layers, h, d, n_q, n_kv, inter, vocab = _shape(config)
    b = 2 if precision in ("bf16", "fp16") else 4
    norm = 4 * h + (b * h if b == 2 else 0) + b * h
    if attn_impl == "eager":
        attn = b * 5 * n_q * d + (4 + (b if b == 2 else 0)) * n_q * keys
    else:
        attn = b * (3 * n_q * d + 2 * n_kv * d) + 4 * n_q
    return {"norms": 2 * norm, "attention": attn, "mlp": 0 if tiled_mlp else 4 * b * inter}


def activation_items(recipe: Recipe, config, target: str = "gpu") -> list[Item]:
    """The activations of one micro-step's forward and backward on one rank."""
    m, t, a = recipe.model, recipe.train, recipe.align
    layers, h, d, n_q, n_kv, inter, vocab = _shape(config)
    b = 2 if t.precision in ("bf16", "fp16") else 4
    rows = t.micro_batch_size * (2 if a.enabled else 1)
    sp = t.sequence_parallel
    tokens = rows * t.seq_len / sp
    keys = t.seq_len if m.attn_pattern == "full" else max(1, int(t.seq_len * m.s2_group_ratio))
    per = saved_per_token(config, t.precision, m.attn_impl, keys, m.tiled_mlp)
    layer = sum(per.values())
    offload = m.activation_offload
    shape = f"[{rows}, {t.seq_len // sp}] tokens" + (" (long + short views)" if a.enabled else "")
    items = []
    if m.activation_checkpointing:
        kept = layers * b * h * tokens
        items.append(Item("activations: checkpoints (layer inputs)", kept, "host" if offload else "device",
                          f"{layers} layers x {shape} x {b} B x h={h}"))
        items.append(Item("activations: one layer recomputed in backward", layer * tokens, "device",
                          f"{layer / 1024:.1f} KiB/token: " + ", ".join(f"{k} {v / 1024:.1f}" for k, v in per.items())))
    else:
        saved = layers * layer * tokens
        note = f"{layers} layers x {shape} x {layer / 1024:.1f} KiB/token"
        if offload:  # the layer being computed stays on the device
            items.append(Item("activations: saved for backward (offloaded)", saved - layer * tokens, "host", note))
            items.append(Item("activations: saved for backward, current layer", layer * tokens, "device"))
        else:
            items.append(Item("activations: saved for backward", saved, "device", note))
    # outside the layers: final norm, the decoder's output, its rotated long rows, its gradient
    outside = (4 * h + (b * h if b == 2 else 0) + b * h) + b * h + (b * h / 2 if a.enabled else 0) + b * h
    items.append(Item("activations: final norm, hidden states and their gradient", outside * tokens, "device",
                      "the losses' input [rows, L/SP, h]"))
    # backward's working set of one layer: gradients of its widest intermediates
    shard_tokens = rows * min(t.seq_len / sp, h)  # TiledMLP: shards of ~hidden_size tokens per row
    mlp_tmp = 3 * b * inter * (shard_tokens if m.tiled_mlp else tokens)
    if m.tiled_mlp:
        mlp_tmp += 4 * b * inter * shard_tokens  # the shard's recomputed intermediates
    attn_tmp = b * 2 * (n_q + 2 * n_kv) * d * tokens
    if m.attn_impl == "eager":
        attn_tmp += 2 * 4 * n_q * keys * tokens
    items.append(Item("activations: backward working set of one layer", max(mlp_tmp, attn_tmp) + 2 * b * h * tokens,
                      "device", "gradients of its widest intermediates"))
    # the chunked losses: one chunk of logits, their gradient, fp32 blocks of the math
    chunk_rows = max(1, a.chunk_tokens // 2) * 2 if a.enabled else a.chunk_tokens
    chunk_rows = min(chunk_rows, tokens)
    block = min(chunk_rows * vocab, BLOCK_ELEMS[target])
    chunk = chunk_rows * vocab * 2 * b + block * 4 * (3 + (1 if b == 2 else 0)) + chunk_rows * h * b
    items.append(Item("activations: loss chunk buffers", chunk, "device",
                      f"align.chunk_tokens={a.chunk_tokens}: {chunk_rows} logit rows x V={vocab}"))
    return items


# ------------------------------------------------------------------------------------- all
def estimate_memory(recipe: Recipe, config, ds_config: dict, world: int, target: str = "gpu") -> MemoryEstimate:
    """Per-rank memory of a training step: model states (DeepSpeed's formulas), DeepSpeed's
    buffers, activations. `target` "gpu" (the default: what the caching allocator must hold) or
    "cpu" (ranks on CPU: untouched buffer pages are not resident; the losses' blocks are smaller)."""
    if target not in BLOCK_ELEMS:
        raise ValueError(f"target={target!r}: expected gpu or cpu")
    params = param_counts(config, recipe)
    dp = max(1, world // recipe.train.sequence_parallel)
    est = MemoryEstimate(params=params, world=world, target="GPU" if target == "gpu" else "CPU rank")
    est.items = model_state_items(params, ds_config, recipe.train.precision, world, dp, target)
    est.items += activation_items(recipe, config, target)
    if params.trainable == params.total and recipe.train.precision != "fp32":
        est.deepspeed = deepspeed_formula(params, ds_config, world)
    return est

