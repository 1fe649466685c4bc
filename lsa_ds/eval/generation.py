"""Greedy decoding for the generative tasks (passkey, LongBench, BABILong).

One explicit GenerationConfig (greedy, no penalties, no sampling) replaces whatever a checkpoint's
generation_config.json asks for, so every model is decoded the same way. Prompts of equal length
are batched without padding (passkey cells are token-exact, so a whole cell is one batch); others
run one by one, so no padding convention of any model can change a result.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import GenerationConfig


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int,
                    stop_ids: list[int] | None = None, batch_size: int = 8) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids), cut before the first stop token."""

    stop = [int(s) for s in (stop_ids or []) if s is not None and s >= 0]
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, use_cache=True,
                              eos_token_id=stop or None, pad_token_id=stop[0] if stop else 0)
    device = next(model.parameters()).device
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    for n, members in by_len.items():
        for start in range(0, len(members), batch_size):
            rows = members[start:start + batch_size]
            ids = torch.tensor([prompts[i] for i in rows], dtype=torch.int64, device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            for r, i in enumerate(rows):
                new = gen[r, n:].tolist()
                cut = next((j for j, t in enumerate(new) if t in stop), len(new))
                out[i] = new[:cut]
    return out


def middle_truncate(ids: list[int], max_tokens: int) -> list[int]:
    """Keep the first and last max_tokens/2 tokens of an over-long prompt (LongBench's rule: the
    instruction at the start and the question at the end both survive)."""
    if max_tokens <= 0 or len(ids) <= max_tokens:
        return ids
    head = max_tokens // 2
    return ids[:head] + ids[len(ids) - (max_tokens - head):]
