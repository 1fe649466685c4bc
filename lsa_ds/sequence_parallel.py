"""Ulysses sequence parallelism (`train.sequence_parallel: N`) with long-short pairs across shards.

Ranks form groups of N consecutive ranks; data parallelism is world / N (data-parallel rank
= rank // N). Every rank of a group reads the same windows and, in training, takes its contiguous
c = L / N slice of every row of [A; S] with global position ids. DeepSpeed's
`UlyssesSPAttentionHF` turns attention into two all-to-alls per layer (sequence-sharded ->
head-sharded and back); everything else in the decoder is per token.

The pairs. Short position j of sample b pairs with long position j + E_b, which generally lives on
another rank. `alignment_losses` on one device rotates each long row so that slot j holds long
position (j + E_b) mod L; here that rotation is one permutation all-to-all of the long rows'
final hidden states (h numbers per token: never logits, never the whole sequence), after which
rank r holds rotated slots [r·c, (r+1)·c): the long partner of each of its short positions, plus
(slots ≥ L - E_b) the long positions t < E_b that have no partner. It is a permutation, so every
long token, every CE target and every pair is on exactly one rank; the chunked losses then run
unchanged on local data (shifts 0). The backward is the inverse permutation.

    rank 0 holds A[0:c] S[0:c]      rank 1 holds A[c:2c] S[c:2c]        (N = 2, L = 2c)
    pair (S[j], A[j+E]):  j < c on rank 0, its partner A[j+E] on rank 0 if j+E < c, else rank 1
    rotate_long:  slot j <- A[(j+E) mod L]  ->  rank 0 gets A[E:E+c], rank 1 A[E+c:L] ++ A[0:E]

Normalisation: ZeRO-3 reduce-scatters gradients as a mean over all world ranks (SP ranks
included; `reduce_scatter: true` is pinned), so `Engine.train_step` keeps k = world · grad_accum
and divides by the true global token and pair counts (each SP rank sees the whole micro-batch,
so its counts are divided by N). Evaluation runs every rank on whole sequences (Ulysses is off in
eval mode): no slicing, the same numbers as without SP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

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
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    return UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=hf_model, core_attn_implementation=hf_model.config._attn_implementation,
        sequence_parallel_size=size(recipe), micro_batch_size=rows_per_forward(recipe),
        seq_length_is_variable=True, disable_in_eval=True)


def group():
    from deepspeed.runtime.sequence_parallel import parallel_state_sp

    return parallel_state_sp.get_sequence_parallel_group()


# ----------------------------------------------------------------------------- pair exchange
def rotation_plan(shifts: torch.Tensor, L: int, n: int, rank: int) -> tuple[torch.Tensor, list[int], torch.Tensor, list[int]]:
    """(send index, send splits, receive index, receive splits) moving long position t of sample b
    to rotated slot (t - E_b) mod L, for SP rank `rank` of `n`. Indices are into the flat local
    [B·c] slice; both sides derive the same plan from the shifts alone (no metadata exchange)."""
    shifts = torch.as_tensor(shifts, dtype=torch.long).cpu()
    B, c = shifts.numel(), L // n
    t = torch.arange(L).expand(B, L)
    b = torch.arange(B)[:, None].expand(B, L)
    slot = (t - shifts[:, None]) % L
    src, dst = t // c, slot // c
    mine = src == rank  # what this rank sends, ordered by (destination, b, t)
    order = torch.argsort(dst[mine] * (B * L) + b[mine] * L + t[mine])
    send_index = (b[mine] * c + t[mine] % c)[order]
    send_splits = torch.bincount(dst[mine], minlength=n).tolist()
    got = dst == rank  # each source sends in (b, t) order, so arrivals are ordered by (source, b, t)
    order = torch.argsort(src[got] * (B * L) + b[got] * L + t[got])
    recv_index = (b[got] * c + slot[got] % c)[order]
    recv_splits = torch.bincount(src[got], minlength=n).tolist()
    return send_index, send_splits, recv_index, recv_splits


def _exchange(x: torch.Tensor, index_out, out_splits, index_in, in_splits, grp) -> torch.Tensor:
    """Rows x[index_out] leave in out_splits per rank; arrivals (in_splits) land at index_in."""
    rows = x.reshape(-1, *x.shape[2:])
    send = rows.index_select(0, index_out.to(x.device)).contiguous()
    recv = rows.new_empty((sum(in_splits), *rows.shape[1:]))
    dist.all_to_all_single(recv, send, output_split_sizes=in_splits, input_split_sizes=out_splits, group=grp)
    return rows.new_zeros(rows.shape).index_copy_(0, index_in.to(x.device), recv).view_as(x)


class _RotateLong(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan, grp):
        ctx.plan, ctx.grp = plan, grp
        return _exchange(x, *plan, grp)

    @staticmethod
    def backward(ctx, grad):
        send_index, send_splits, recv_index, recv_splits = ctx.plan  # the inverse permutation
        return _exchange(grad.contiguous(), recv_index, recv_splits, send_index, send_splits, ctx.grp), None, None


def rotate_long(long_local: torch.Tensor, shifts: torch.Tensor, L: int, grp) -> torch.Tensor:
    """[B, c, h] local slice of the long rows -> [B, c, h] local slice of the rotated long rows;
    gradients flow back to the ranks the vectors came from."""
    plan = rotation_plan(shifts, L, dist.get_world_size(grp), dist.get_rank(grp))
    return _RotateLong.apply(long_local, plan, grp)


def rotated_labels(labels_long: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """The rotation of whole long label rows [B, L] (every SP rank has them: no exchange)."""
    L = labels_long.shape[1]
    slot = (torch.arange(L, device=labels_long.device) + shifts.to(labels_long.device).long()[:, None]) % L
    return labels_long.gather(1, slot)
