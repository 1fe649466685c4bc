"""Chunked LM losses and long-short alignment divergences (docs/design.md, "The method"): no
[N, L, V] logits ever.

Pure torch, no DeepSpeed. Inputs are the decoder's hidden states and a `project` callable
(hidden -> logits); the engine passes the output layer as a *module call* so ZeRO-3's hooks gather
its sharded weight. Work runs chunk by chunk: each chunk's logits are recomputed in backward
(`torch.utils.checkpoint`, non-reentrant; all but the last chunk, whose backward runs first), so
peak memory holds one chunk of logits plus their gradient, and the whole call is ONE autograd graph
(one backward per micro-step, which ZeRO-3's gradient hooks require).

Aligned pairs: rows of `hidden` are [long views; short views]; short position j of sample b pairs
with long position j + E_b. Each sample's long row is rotated by E_b so slot j holds long position
(j + E_b) mod L: slots j < L - E_b line up with their short partner, and the tail slots hold the
unpaired long positions t < E_b. Every long position is thus visited exactly once, each logit is
computed once per forward (its CE and its divergence come from the same tensor), and the chunk
schedule depends only on shapes, never on the shifts (the same on every rank).

The per-chunk math is a custom autograd Function with closed-form gradients w.r.t. the logits
(cheaper than autograd through softmax graphs; bench/bench_losses.py has the numbers).
Results are sums and counts: the caller normalises over the whole optimizer step.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

from lsa_ds.align.views import IGNORE

Project = Callable[[torch.Tensor], torch.Tensor]
Divergence = Literal["sce", "skl", "js"]
Detach = Literal["none", "long", "short"]
KEYS = ("ce_sum", "div_sum", "sce_sum", "skl_sum", "gap_sum")  # the order of a chunk's output vector

# ---------------------------------------------------------------------------- recompute flag
# Under checkpoint the chunk Function runs twice: in forward (its values are the loss) and again in
# backward only so that checkpoint can re-save its input logits. The second run's values are thrown
# away, so the Function skips its math there; `context_fn` tells it which run it is in.
_state = threading.local()


@contextlib.contextmanager
def _recomputing():
    prev = getattr(_state, "recomputing", False)
    _state.recomputing = True
    try:
        yield
    finally:
        _state.recomputing = prev


def _context_fn():
    return contextlib.nullcontext(), _recomputing()


# ---------------------------------------------------------------------------- per-chunk math
# A chunk's logits z [P, k, V]; with pairs k = 2: view 0 = long (logits a, p = softmax(a)), view 1 =
# short (s, q). The math runs in fp32 over row blocks of the chunk (see _row_blocks). Everything is
# written from softmax + logsumexp, so each logit costs one exp per pass: exp dominates this math.
_CPU_BLOCK_ELEMS, _DEVICE_BLOCK_ELEMS = 1 << 21, 1 << 26


def _row_blocks(z: torch.Tensor) -> range:
    """Row starts of the fp32 blocks of a chunk. On CPU a block's temporaries stay under glibc's
    32 MiB mmap ceiling, so malloc reuses them instead of page-faulting fresh chunk-sized buffers
    (measured: costlier than the math itself); on accelerators the caching allocator does that."""
    limit = _CPU_BLOCK_ELEMS if z.device.type == "cpu" else _DEVICE_BLOCK_ELEMS
    return range(0, z.shape[0], max(1, limit // (z.shape[1] * z.shape[2])))


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise inner product over the vocabulary, [..., 1]. Multiply-and-sum over a block-sized
    temporary: on CPU a batched GEMV (bmm) measured ~10x slower."""
    return (x * y).sum(-1, keepdim=True)


def _lse(zf: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """logsumexp [..., 1] from the softmax without another exp pass: softmax is monotone, so the
    largest probability is exp(0) / sum at the largest logit and lse = max z - log max p (max p >= 1/V,
    well conditioned). log_softmax followed by exp would pay for exp twice; exp dominates this math."""
    return zf.amax(-1, keepdim=True) - probs.amax(-1, keepdim=True).log()


def _targets(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid [P, k], targets [P, k, 1] with IGNORE rows pointing at index 0, masked later)."""
    return y != IGNORE, y.clamp_min(0).unsqueeze(-1)


def _js_log_ratios(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p/m, log q/m) for m = (p + q) / 2, from d = log p - log q: log m/q = log((1 + e^d) / 2)
    through expm1/log1p, exact where p ~ q (where JS is small and log p - log m would cancel), and
    written with -|d| so that it cannot overflow."""
    u = torch.log1p(torch.expm1(-d.abs()).mul_(0.5)).add_(d.clamp_min(0))  # log m - log q
    return d - u, u.neg_()


def _block_forward(zf: torch.Tensor, y: torch.Tensor, pairs: torch.Tensor | None, divergence: str,
                   with_divergence: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the KEYS vector, the divergence's per-pair inner products [P, 2] that backward reuses) of one
    block of fp32 logits [P, k, V].

    KLs are dot products with a log-ratio, never CE minus entropy: near-aligned distributions have
    KL << entropy and the difference would be lost to fp32 cancellation.
    """
    probs = torch.softmax(zf, dim=-1)
    lse = _lse(zf, probs)
    valid, tgt = _targets(y)
    lp_t = (zf.gather(-1, tgt) - lse).squeeze(-1)  # log prob of each row's target
    zero = zf.new_zeros(())
    ce = -torch.where(valid, lp_t, zero).sum()
    if pairs is None:
        return torch.stack([ce, zero, zero, zero, zero]), None
    a, s, p, q, la, ls = zf[:, 0], zf[:, 1], probs[:, 0], probs[:, 1], lse[:, 0], lse[:, 1]
    # gap: CE of the long target under the short context minus under the long one
    lq_t = (s.gather(-1, tgt[:, 0]) - ls).squeeze(-1)
    gap = torch.where(pairs & valid[:, 0], lp_t[:, 0] - lq_t, zero).sum()
    stats = torch.cat([_dot(p, s), _dot(q, a)], -1)  # <p, s>, <q, a>
    sce = (ls + la - stats.sum(-1, keepdim=True))  # -<p, log q> - <q, log p>, as sum(p) = 1
    d = (a - s).sub_(la - ls)  # log p - log q
    div = sce
    if with_divergence and divergence == "skl":
        stats = torch.cat([_dot(p, d), -_dot(q, d)], -1)  # KL(p||q), KL(q||p)
        skl = div = stats.sum(-1, keepdim=True)
    else:  # every term (p_i - q_i)(log p_i - log q_i) is >= 0
        skl = _dot(p - q, d)
    if with_divergence and divergence == "js":
        lp_m, lq_m = _js_log_ratios(d)
        stats = torch.cat([_dot(p, lp_m), _dot(q, lq_m)], -1)  # KL(p||m), KL(q||m)
        div = 0.5 * stats.sum(-1, keepdim=True)
    pair_sum = lambda v: torch.where(pairs, v.squeeze(-1), zero).sum()  # noqa: E731
    vec = torch.stack([ce, pair_sum(div) if with_divergence else zero, pair_sum(sce), pair_sum(skl), gap])
    return vec, stats if with_divergence else None


def _block_grad(zf: torch.Tensor, y: torch.Tensor, pairs: torch.Tensor | None, g: torch.Tensor, divergence: str,
                detach: str, with_divergence: bool, stats: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """d(g[0] * ce + g[1] * div)/d(logits) of one block, written into `out` [P, k, V] (fp32).

    CE: softmax - onehot per row with a target. Divergence, with the softmax Jacobian
    dp/da = diag(p) - p p^T and d = log p - log q:
      sce: ga = p - q - p(log q - <p,log q>) = p(1 + <p,s> - s) - q     (lse cancels)
           gs = q - p - q(log p - <q,log p>) = q(1 + <q,a> - a) - p
      skl: ga = p(1 + d - KL(p||q)) - q     gs = q(1 - d - KL(q||p)) - p
      js:  ga = p(log p/m - KL(p||m)) / 2   gs = q(log q/m - KL(q||m)) / 2
    Each is the partial derivative with the other side held fixed, so detaching a side drops it.
    Both terms of a side fold into p (alpha + beta x) + gamma q per row: three passes over the
    vocabulary and no separate buffer. `stats` are the per-pair inner products forward computed
    (recomputed here when absent).
    """
    probs = torch.softmax(zf, dim=-1)
    valid, tgt = _targets(y)
    w_ce = valid.to(probs.dtype).unsqueeze(-1) * g[0]  # [P, k, 1]
    if pairs is None or not with_divergence:
        return torch.mul(probs, w_ce, out=out).scatter_add_(-1, tgt, -w_ce)
    w = pairs.to(probs.dtype).unsqueeze(-1) * g[1]  # [P, 1]
    a, s, p, q, oa, os = zf[:, 0], zf[:, 1], probs[:, 0], probs[:, 1], out[:, 0], out[:, 1]
    wa, ws = w_ce[:, 0], w_ce[:, 1]
    need_long, need_short = detach != "long", detach != "short"
    if divergence == "sce":
        p_s, q_a = (stats[:, :1], stats[:, 1:]) if stats is not None else (_dot(p, s), _dot(q, a))
        if need_long:  # p (w_ce + w (1 + <p,s>) - w s) - w q
            torch.addcmul(wa + w * (1 + p_s), s, -w, out=oa).mul_(p).addcmul_(q, -w)
        if need_short:
            torch.addcmul(ws + w * (1 + q_a), a, -w, out=os).mul_(q).addcmul_(p, -w)
    else:
        lse = _lse(zf, probs)
        d = (a - s).sub_(lse[:, 0] - lse[:, 1])
        if divergence == "skl":
            kl_pq, kl_qp = (stats[:, :1], stats[:, 1:]) if stats is not None else (_dot(p, d), -_dot(q, d))
            if need_long:  # p (w_ce + w (1 - KL(p||q)) + w d) - w q
                torch.addcmul(wa + w * (1 - kl_pq), d, w, out=oa).mul_(p).addcmul_(q, -w)
            if need_short:
                torch.addcmul(ws + w * (1 - kl_qp), d, -w, out=os).mul_(q).addcmul_(p, -w)
        else:
            lp_m, lq_m = _js_log_ratios(d)
            kl_pm, kl_qm = (stats[:, :1], stats[:, 1:]) if stats is not None else (_dot(p, lp_m), _dot(q, lq_m))
            if need_long:  # p (w_ce - w KL(p||m) / 2 + w log(p/m) / 2)
                torch.addcmul(wa - 0.5 * w * kl_pm, lp_m, 0.5 * w, out=oa).mul_(p)
            if need_short:
                torch.addcmul(ws - 0.5 * w * kl_qm, lq_m, 0.5 * w, out=os).mul_(q)
    if not need_long:
        torch.mul(p, wa, out=oa)
    if not need_short:
        torch.mul(q, ws, out=os)
    return out.scatter_add_(-1, tgt, -w_ce)


class _ChunkLoss(torch.autograd.Function):
    """logits [P, k, V] (k = 1: CE rows; k = 2: (long, short) per pair) -> the KEYS vector.

    Saves only the logits. Backward recomputes the softmax block by block and writes the
    closed-form gradient straight into the returned buffer: peak is the logits, their gradient and
    one block of fp32 temporaries. Only the ce and div entries carry gradient (the rest are logs).
    """

    @staticmethod
    def forward(ctx, z, y, pairs, divergence, detach, with_divergence):
        ctx.save_for_backward(z, y, pairs)
        ctx.divergence, ctx.detach, ctx.with_divergence, ctx.stats = divergence, detach, with_divergence, None
        if getattr(_state, "recomputing", False):
            return z.new_zeros(len(KEYS), dtype=torch.float32)  # discarded by checkpoint
        blocks = _row_blocks(z)
        done = [_block_forward(z[i:i + blocks.step].float(), y[i:i + blocks.step],  # fp32 whatever the precision
                               None if pairs is None else pairs[i:i + blocks.step], divergence, with_divergence)
                for i in blocks]
        if done[0][1] is not None:
            # [P, 2] per chunk, kept on ctx rather than saved: backward runs on this (the first run's)
            # ctx, and these few numbers spare it a pass over the vocabulary per side
            ctx.stats = torch.cat([st for _, st in done])
        return torch.stack([vec for vec, _ in done]).sum(0)

    @staticmethod
    def backward(ctx, g):
        z, y, pairs = ctx.saved_tensors
        grad = torch.empty_like(z)
        blocks = _row_blocks(z)
        for i in blocks:
            sl = slice(i, i + blocks.step)
            # fp32 logits: the gradient is written straight into the returned buffer
            out = grad[sl] if grad.dtype == torch.float32 else torch.empty_like(grad[sl], dtype=torch.float32)
            _block_grad(z[sl].float(), y[sl], None if pairs is None else pairs[sl], g, ctx.divergence, ctx.detach,
                        ctx.with_divergence, None if ctx.stats is None else ctx.stats[sl], out)
            if out.dtype != grad.dtype:
                grad[sl].copy_(out)
        return grad, None, None, None, None, None


def _chunk_closed(z, y, pairs, divergence, detach, with_divergence):
    return _ChunkLoss.apply(z, y, pairs, divergence, detach, with_divergence)


def _chunk_autograd(z, y, pairs, divergence, detach, with_divergence):
    """The same chunk math through autograd (the closed form's reference; kept for bench/tests)."""
    logp = torch.log_softmax(z.float(), dim=-1)
    valid, tgt = _targets(y)
    lp_t = logp.gather(-1, tgt).squeeze(-1)
    ce = -torch.where(valid, lp_t, 0.0).sum()
    zero = ce.new_zeros(())
    if pairs is None:
        return torch.stack([ce, zero, zero, zero, zero])
    with torch.set_grad_enabled(torch.is_grad_enabled() and with_divergence):
        lp, lq = logp[:, 0], logp[:, 1]
        lp, lq = (lp.detach() if detach == "long" else lp), (lq.detach() if detach == "short" else lq)
        p, q = lp.exp(), lq.exp()
        per_pair = {"sce": -(p * lq).sum(-1) - (q * lp).sum(-1), "skl": ((p - q) * (lp - lq)).sum(-1)}
        if divergence == "js":
            log_m = torch.logaddexp(lp, lq) - math.log(2.0)
            per_pair["js"] = 0.5 * (p * (lp - log_m)).sum(-1) + 0.5 * (q * (lq - log_m)).sum(-1)
        div = torch.where(pairs, per_pair[divergence], 0.0).sum() if with_divergence else zero
    lq_t = lq.detach().gather(-1, tgt[:, 0]).squeeze(-1)
    gap = torch.where(pairs & valid[:, 0], lp_t[:, 0].detach() - lq_t, 0.0).sum()
    logged = [torch.where(pairs, per_pair[k].detach(), 0.0).sum() for k in ("sce", "skl")]
    return torch.stack([ce, div, *logged, gap])


# ---------------------------------------------------------------------------- public API
def _check(hidden, labels, pair_mask, shifts, divergence, detach, chunk_tokens):
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)}: expected [N, L, H] "
                         f"and [N, L]")
    if divergence not in ("sce", "skl", "js") or detach not in ("none", "long", "short"):
        raise ValueError(f"divergence={divergence!r}, detach={detach!r}: expected sce|skl|js and none|long|short")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens}: expected >= 1")
    if (pair_mask is None) != (shifts is None):
        raise ValueError("pair_mask and shifts: expected both (rows [long; short]) or neither (long rows only)")
    if pair_mask is None:
        return None, None
    N, L = labels.shape
    pair_mask = torch.as_tensor(pair_mask, device=hidden.device)
    shifts = torch.as_tensor(shifts, device=hidden.device)
    if N % 2 or pair_mask.shape != (N // 2, L) or pair_mask.dtype != torch.bool or shifts.shape != (N // 2,):
        raise ValueError(f"hidden rows N={N}, pair_mask {tuple(pair_mask.shape)} {pair_mask.dtype}, shifts "
                         f"{tuple(shifts.shape)}: expected N = 2B, bool pair_mask [B, L] and shifts [B]")
    long_pos = torch.arange(L, device=hidden.device) + shifts.long()[:, None]
    if bool((pair_mask & ((long_pos < 0) | (long_pos >= L))).any()):  # one host sync per call
        raise ValueError(f"pair_mask pairs short position j with long position j + E outside [0, L-1={L - 1}]; "
                         f"expected pair_mask[b, j] only where j + shifts[b] <= L - 1")
    return pair_mask, shifts.long()


def alignment_losses(hidden: torch.Tensor, labels: torch.Tensor, project: Project,
                     pair_mask: torch.Tensor | None = None, shifts: torch.Tensor | None = None, *,
                     divergence: Divergence = "sce", detach: Detach = "none", chunk_tokens: int = 1024,
                     with_divergence: bool = True, impl: Literal["closed", "autograd"] = "closed",
                     ) -> dict[str, torch.Tensor]:
    """CE and the long-short divergence over a micro-batch, chunked; all results 0-dim fp32 tensors.

    hidden [N, L, H]; labels [N, L] (IGNORE = -100 masked). With pair_mask [B, L] bool and shifts [B]
    (short-view coordinates, as `lsa_ds.align.views.make_views` returns them) rows are [long; short],
    N = 2B; without them every row is a plain CE row (alignment off).
    project: hidden[..., H] -> logits[..., V], called once per chunk on [<= chunk_tokens, H].
    chunk_tokens counts logit rows per chunk (long + short), the same unit as `chunked_ce`.

    Returns ce_sum / ce_count (every non-IGNORE target of every row), div_sum (the `divergence`
    summed over pairs; carries gradient; 0 when with_divergence=False or there are no pairs),
    pair_count, and detached sums over the same pairs for logging: sce_sum, skl_sum and gap_sum
    (CE of the long target under the short context minus under the long one; pairs whose long
    target is IGNORE are left out). detach: "long" treats the long distribution p as a constant in
    the divergence, "short" the short one q; CE gradients are never detached.
    with_divergence=False computes the logging sums in forward but no divergence gradient.
    impl: "closed" (closed-form backward) or "autograd" (same math through autograd, for benches).
    """
    pair_mask, shifts = _check(hidden, labels, pair_mask, shifts, divergence, detach, chunk_tokens)
    N, L, H = hidden.shape
    if pair_mask is None:  # CE rows only: [N*L, 1, H]
        parts = [hidden.reshape(N * L, 1, H), labels.reshape(N * L, 1)]
        per_chunk, pairs = chunk_tokens, None
    else:
        B = N // 2
        # rotate each long row by its shift: slot j <- long position (j + E_b) mod L (see module doc)
        slot = (torch.arange(L, device=hidden.device) + shifts[:, None]) % L
        long_h = hidden[:B].gather(1, slot.unsqueeze(-1).expand(B, L, H)).reshape(B * L, H)
        long_y = labels[:B].gather(1, slot).reshape(B * L)
        parts = [long_h, hidden[B:].reshape(B * L, H), torch.stack([long_y, labels[B:].reshape(B * L)], dim=1),
                 pair_mask.reshape(B * L)]
        per_chunk, pairs = max(1, chunk_tokens // 2), True

    chunk_math = _chunk_closed if impl == "closed" else _chunk_autograd

    def run_chunk(*chunk: torch.Tensor) -> torch.Tensor:
        if pairs is None:
            h, y = chunk
            m = None
        else:  # interleave (long, short) per pair: one project call per chunk (one ZeRO-3 gather)
            hl, hs, y, m = chunk
            h = torch.stack([hl, hs], dim=1)
        P, k = y.shape
        z = project(h.reshape(P * k, H))
        return chunk_math(z.view(P, k, -1), y, m, divergence, detach, with_divergence)

    chunks = list(zip(*(t.split(per_chunk) for t in parts)))
    outs = []
    for i, chunk in enumerate(chunks):
        # The last chunk keeps its logits instead: backward starts with it, so holding them from
        # here to there raises no peak, and a single-chunk call costs no recompute at all.
        if torch.is_grad_enabled() and i < len(chunks) - 1:
            outs.append(checkpoint(run_chunk, *chunk, use_reentrant=False, context_fn=_context_fn))
        else:
            outs.append(run_chunk(*chunk))
    total = torch.stack(outs).sum(0)
    res = {k: total[i] for i, k in enumerate(KEYS)}
    for k in KEYS[2:]:
        res[k] = res[k].detach()
    res["ce_count"] = (labels != IGNORE).sum().float()
    res["pair_count"] = pair_mask.sum().float() if pair_mask is not None else hidden.new_zeros((), dtype=torch.float32)
    return res


def chunked_ce(hidden: torch.Tensor, labels: torch.Tensor, project: Project, chunk_tokens: int = 1024,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token CE over positions whose label is not IGNORE, and their count (fp32).

    hidden: [N, T, H]; labels: [N, T] (the target of each position, already shifted).
    """
    out = alignment_losses(hidden, labels, project, chunk_tokens=chunk_tokens)
    return out["ce_sum"], out["ce_count"]
