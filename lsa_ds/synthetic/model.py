"""A small causal transformer regressor in plain PyTorch, with selectable positional encoding.

Pre-LayerNorm blocks (causal self-attention + GELU MLP), a final LayerNorm and a linear head read
at one position per example (the last real token). Positional encoding, `pe`:

- `rope`     rotary embedding of queries and keys in every layer (base 10000), as in LLaMA.
- `nope`     none: only the causal mask tells positions apart (attention to BOS still lets the
             model sense length, ~1/(n+1)).
- `learned`  an absolute position table added to the token embeddings. It is sized for the
             longest *test* sequence so the model can run there, but rows past the training
             lengths are never trained: they stay at their random initialisation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

PositionalEncoding = Literal["rope", "nope", "learned"]
POSITIONAL_ENCODINGS: tuple[str, ...] = ("rope", "nope", "learned")


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [seq_len, head_dim], for the rotate-half rotary convention."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by position: x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, use_rope: bool):
        super().__init__()
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model {d_model} must split into {n_heads} heads of even size")
        self.n_heads, self.use_rope = n_heads, use_rope
        self.ln_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        batch, seq, d_model = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).split(d_model, dim=-1)
        q, k, v = (t.view(batch, seq, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.use_rope:
            assert rope is not None
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(attended.transpose(1, 2).reshape(batch, seq, d_model))
        return x + self.mlp(self.ln_mlp(x))


class TinyRegressor(nn.Module):
    """Causal transformer mapping token ids [B, T] to one scalar per example, read at `readout`."""

    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        pe: PositionalEncoding = "rope",
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
    ):
        super().__init__()
        if pe not in POSITIONAL_ENCODINGS:
            raise ValueError(f"unknown positional encoding {pe!r}; expected one of {POSITIONAL_ENCODINGS}")
        self.pe, self.max_seq_len = pe, max_seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        # Sized for the longest sequence the model will ever see (test), trained only on the short ones.
        self.position_table = nn.Embedding(max_seq_len, d_model) if pe == "learned" else None
        self.blocks = nn.ModuleList(Block(d_model, n_heads, use_rope=pe == "rope") for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 1)
        self._rope = rope_tables(max_seq_len, d_model // n_heads) if pe == "rope" else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2 style small init; embeddings at std 0.02 rather than PyTorch's 1.0.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] int64, readout [B] (index of each example's last real token) -> [B] float."""
        seq = tokens.shape[1]
        if seq > self.max_seq_len:
            raise ValueError(f"sequence of {seq} tokens exceeds the model's max_seq_len {self.max_seq_len}")
        x = self.embed(tokens)
        if self.position_table is not None:
            x = x + self.position_table.weight[:seq]
        rope = None if self._rope is None else (self._rope[0][:seq], self._rope[1][:seq])
        for block in self.blocks:
            x = block(x, rope)
        last = x[torch.arange(len(tokens)), readout]
        return self.head(self.ln_final(last)).squeeze(-1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

