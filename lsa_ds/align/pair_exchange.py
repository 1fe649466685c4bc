"""The long-short pair exchange of sequence parallelism: every pair (S[j], A[j + E]) brought onto
one rank, as a permutation of the long rows' final hidden states. torch.distributed only.

Under Ulysses sequence parallelism (`lsa_ds.train.sequence_parallel`) rank r of a group of N
holds columns [r·c, (r+1)·c) of every row of [A; S], c = L / N. Short position j of sample b
pairs with long position j + E_b, which generally lives on another rank. `alignment_losses` on
one device rotates each long row so that slot j holds long position (j + E_b) mod L; here that
rotation is one all-to-all of hidden states (h numbers per token: never logits, never the whole
sequence), after which rank r holds rotated slots [r·c, (r+1)·c): the long partner of each of its
short positions, plus (slots >= L - E_b) the long positions t < E_b that have no partner. It is a
permutation, so every long token, every CE target and every pair is on exactly one rank; the
chunked losses then run unchanged on local data (shifts 0). The backward is the inverse
permutation.

    rank 0 holds A[0:c] S[0:c]      rank 1 holds A[c:2c] S[c:2c]        (N = 2, L = 2c)
    pair (S[j], A[j+E]):  j < c on rank 0, its partner A[j+E] on rank 0 if j+E < c, else rank 1
    rotate_long:  slot j <- A[(j+E) mod L]  ->  rank 0 gets A[E:E+c], rank 1 A[E+c:L] ++ A[0:E]
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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
