"""Shifted sparse attention (S²-Attn, LongLoRA §3.2) as a transformers attention function, training only.

The sequence is cut into groups of G tokens. Half the heads attend causally within their group;
the other half within groups shifted by G/2, so information flows between neighbouring groups.
Cost is O(L·G) per head instead of O(L²). In eval mode (held-out evaluation, generation, the
export) it is plain SDPA: full attention, as LongLoRA evaluates.

Two choices differ from LongLoRA's reference code, both on purpose:
- No wrap-around. LongLoRA rolls the shifted heads' tokens by -G/2, so its last group holds the
  sequence's last G/2 tokens *and* its first G/2, and those first tokens attend to the end of the
  sequence (a leak from the future). Here the shifted groups are [-G/2, G/2), [G/2, 3G/2), …,
  [L - G/2, L + G/2): the half groups at both ends are padded, padding is never attended to.
- One group (G = L) is full causal attention: there is no neighbouring group to shift towards.

Packed documents (restarted position ids) arrive as transformers' boolean mask [B, 1, L, L];
each group keeps its diagonal block of it, so documents stay apart within groups too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "lsa_s2"
"""The attn_implementation name the model is built with when model.attn_pattern is s2."""


def group_size(seq_len: int, ratio: float) -> int:
    return max(1, round(seq_len * ratio))


def check_group(seq_len: int, ratio: float) -> str | None:
    """Why this group size cannot work for training length `seq_len` (None when it can)."""
    g = group_size(seq_len, ratio)
    if seq_len % g:
        return f"model.s2_group_ratio={ratio:g}: the group of {g} tokens does not divide train.seq_len={seq_len}"
    if g < seq_len and g % 2:
        return f"model.s2_group_ratio={ratio:g}: the group of {g} tokens is odd (the shifted half moves by group/2)"
    return None


def _diagonal_blocks(mask: torch.Tensor, g: int) -> torch.Tensor:
    """[B, T, T] -> [B * T/g, 1, g, g]: each group's block of the mask."""
    b, t, _ = mask.shape
    n = t // g
    blocks = torch.diagonal(mask.view(b, n, g, n, g), dim1=1, dim2=3)  # [B, g, g, n]
    return blocks.permute(0, 3, 1, 2).reshape(b * n, 1, g, g)


def _grouped(x: torch.Tensor, g: int) -> torch.Tensor:
    """[B, h, T, D] -> [B * T/g, h, g, D]."""
    b, h, t, d = x.shape
    return x.view(b, h, t // g, g, d).transpose(1, 2).reshape(b * (t // g), h, g, d)


def _ungrouped(x: torch.Tensor, b: int) -> torch.Tensor:
    """[B * n, h, g, D] -> [B, h, n * g, D]."""
    bn, h, g, d = x.shape
    return x.view(b, bn // b, h, g, d).transpose(1, 2).reshape(b, h, (bn // b) * g, d)


def s2_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                 g: int, dropout: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """S²-Attn over [B, H, L, D] tensors (key/value already repeated to H heads). `mask`: boolean
    [B, L, L] (True = may attend), or None for plain causal. Returns [B, H, L, D]."""
    b, h, length, _ = query.shape
    if g >= length:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=None if mask is None else mask[:, None],
                                              is_causal=mask is None, dropout_p=dropout, scale=scale)
    half, s = h // 2, g // 2
    sdpa = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=m is None,  # noqa: E731
                                                             dropout_p=dropout, scale=scale)
    # Heads [0, half): groups [kG, (k+1)G).
    plain = sdpa(*(_grouped(x[:, :half], g) for x in (query, key, value)),
                 None if mask is None else _diagonal_blocks(mask, g))
    # Heads [half, H): groups shifted by G/2, padded by G/2 at both ends (padding never attended).
    padded = [F.pad(x[:, half:], (0, 0, s, s)) for x in (query, key, value)]
    total = length + g
    real = torch.zeros(total, dtype=torch.bool, device=query.device)
    real[s:s + length] = True
    if mask is None:
        causal = torch.ones(g, g, dtype=torch.bool, device=query.device).tril()
        keys_real = real.view(total // g, 1, g)
        shifted_mask = (causal & keys_real).unsqueeze(0).expand(b, -1, -1, -1).reshape(-1, 1, g, g)
    else:
        shifted_mask = _diagonal_blocks(F.pad(mask, (s, s, s, s), value=False), g)
    # A padded query attending to nothing gives NaN (and NaN gradients); let it see itself.
    pad_rows = (~real).view(total // g, g).repeat(b, 1)[:, None, :, None] & torch.eye(g, dtype=torch.bool, device=query.device)
    shifted = sdpa(*(_grouped(x, g) for x in padded), shifted_mask | pad_rows)
    shifted = _ungrouped(shifted, b)[:, :, s:s + length]
    return torch.cat([_ungrouped(plain, b), shifted], dim=1)


def register(ratio: float) -> str:
    """Register S²-Attn with transformers under NAME (group = ratio × the sequence's length);
    returns NAME, the attn_implementation to build the model with. One ratio per process (a
    run trains one recipe): registering again re-binds NAME."""

    def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        if not module.training:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        groups = getattr(module, "num_key_value_groups", 1)
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            raise TypeError(f"S²-Attn expects a boolean attention mask, got {attention_mask.dtype}")
        mask = None if attention_mask is None else attention_mask[:, 0]
        out = s2_attention(query, key, value, mask, group_size(query.shape[2], ratio), dropout, scaling)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(NAME, forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
