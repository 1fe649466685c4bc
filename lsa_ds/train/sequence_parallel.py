"""Ulysses sequence parallelism (`train.sequence_parallel: N`) with long-short pairs across shards.

Ranks form groups of N consecutive ranks; data parallelism is world / N (data-parallel rank
= rank // N). Every rank of a group reads the same windows and, in training, takes its contiguous
c = L / N slice of every row of [A; S] with global position ids. DeepSpeed's
`UlyssesSPAttentionHF` turns attention into two all-to-alls per layer (sequence-sharded ->
head-sharded and back); everything else in the decoder is per token.

The pairs: short position j and its long partner j + E generally live on different ranks; after
the decoder, `lsa_ds.align.pair_exchange` moves the long rows' hidden states so that every pair
sits on one rank (the part of the method no engine has; its docstring has the picture).

Normalisation: ZeRO-3 reduce-scatters gradients as a mean over all world ranks (SP ranks
included; `reduce_scatter: true` is pinned), so the loss scale stays world · grad_accum (`lsa_ds.align.objective`)
and divides by the true global token and pair counts (each SP rank sees the whole micro-batch,
so its counts are divided by N). Evaluation runs every rank on whole sequences (Ulysses is off in
eval mode): no slicing, the same numbers as without SP.
"""

from __future__ import annotations

from lsa_ds.errors import UserError

FAMILIES = ("llama", "mistral", "qwen2")
"""Model types whose attention passes global position ids through to the attention function."""


def size(recipe) -> int:
    return recipe.train.sequence_parallel


def check(recipe, hf_config) -> None:
    """Refuse, before anything starts, what Ulysses cannot shard (`resolve_ds_config` refuses a
    world size N does not divide first, where it splits the batch)."""
    n = size(recipe)
    if n == 1:
        return
    m, L = recipe.model, recipe.train.seq_len
    heads = hf_config.num_attention_heads
    kv = getattr(hf_config, "num_key_value_heads", None) or heads
    problems = [
        (L % n, f"train.seq_len={L} is not divisible by train.sequence_parallel={n}"),
        (heads % n, f"the model's {heads} attention heads are not divisible by train.sequence_parallel={n}"),
        (kv % n and n % kv, f"the model's {kv} key/value heads and train.sequence_parallel={n}: one must divide the other"),
        (m.attn_impl == "eager", "model.attn_impl=eager: Ulysses needs sdpa or flash_attention_2"),
        (m.attn_pattern == "s2", "model.attn_pattern=s2: S²-Attn would shift the local heads after Ulysses' all-to-all, not half of all heads"),
        (hf_config.model_type not in FAMILIES, f"model type {hf_config.model_type!r} is not supported with sequence parallelism (supported: {', '.join(FAMILIES)})"),
        (m.load_in_4bit, "model.load_in_4bit: QLoRA with sequence parallelism is not supported"),
    ]
    for bad, why in problems:
        if bad:
            raise UserError(f"train.sequence_parallel={n}: {why}")


def rows_per_forward(recipe) -> int:
    """Rows of every training forward: [A; S] with alignment on (also on steps that skip the
    divergence), the long views only without."""
    return recipe.train.micro_batch_size * (2 if recipe.align.enabled else 1)


def register(recipe, hf_model):
    """Make the model's attention Ulysses attention (process-global, once) and return the mpu
    `deepspeed.initialize` takes (its groups: consecutive ranks per SP group), or None for N = 1."""
    if size(recipe) == 1:
        return None
    # deferred: DeepSpeed is imported on ranks only (never by the `lsa train` parent)
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    return UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=hf_model, core_attn_implementation=hf_model.config._attn_implementation,
        sequence_parallel_size=size(recipe), micro_batch_size=rows_per_forward(recipe),
        seq_length_is_variable=True, disable_in_eval=True)


def group():
    # deferred: as above
    from deepspeed.runtime.sequence_parallel import parallel_state_sp

    return parallel_state_sp.get_sequence_parallel_group()
