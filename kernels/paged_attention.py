"""Attention over a paged KV cache, in torch: the CPU path and the reference for GPU kernels.

Cache layout, per layer: key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim].
Token t of a sequence lives in block `block_table[t // block_size]`, row `t % block_size`; its
flat slot is `block_id * block_size + t % block_size`.

Query heads are grouped onto KV heads as in Hugging Face's `repeat_kv`: query head h reads KV
head h // (num_heads // num_kv_heads). Scores and softmax run in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def store_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                   value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """key, value: [num_tokens, num_kv_heads, head_dim]; slot_mapping: [num_tokens] (int64)."""
    num_kv_heads, head_dim = key.shape[1:]
    key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)


def gather_kv(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """cache: [num_blocks, block_size, H, D]; block_tables: [B, max_blocks] ->
    [B, max_blocks * block_size, H, D], token-ordered (padding rows hold whatever blocks say)."""
    batch = block_tables.shape[0]
    return cache[block_tables].view(batch, -1, *cache.shape[2:])


def paged_decode_attention(query: torch.Tensor, key_cache: torch.Tensor,
                           value_cache: torch.Tensor, block_tables: torch.Tensor,
                           key_mask: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence.

    query: [B, num_heads, head_dim]; block_tables: [B, max_blocks] (int64);
    key_mask: [B, max_blocks * block_size] additive float32 (0 to attend, -inf to skip).
    Returns [B, num_heads, head_dim] in the query's dtype.
    """
    batch, num_heads, head_dim = query.shape
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    keys = gather_kv(key_cache, block_tables).float().permute(0, 2, 3, 1)  # [B, Hkv, D, L]
    values = gather_kv(value_cache, block_tables).float().transpose(1, 2)  # [B, Hkv, L, D]
    q = query.float().view(batch, num_kv_heads, group, head_dim)
    scores = torch.matmul(q, keys).mul_(scale).add_(key_mask[:, None, None, :])
    out = torch.matmul(scores.softmax(dim=-1), values)  # [B, Hkv, G, D]
    return out.view(batch, num_heads, head_dim).to(query.dtype)


def prefill_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      context_len: int, scale: float, sliding_window: int | None = None
                      ) -> torch.Tensor:
    """Causal attention of one sequence's new tokens over its whole context.

    query: [num_new, num_heads, head_dim]; key, value: [context_len + num_new, num_kv_heads,
    head_dim] (the cached prefix followed by the new tokens). New token i sits at position
    context_len + i and sees keys 0..context_len + i (the last `sliding_window` of them, if set).
    Returns [num_new, num_heads, head_dim] in the query's dtype.
    """
    num_new = query.shape[0]
    num_keys = key.shape[0]
    q = query.float().transpose(0, 1).unsqueeze(0)
    k = key.float().transpose(0, 1).unsqueeze(0)
    v = value.float().transpose(0, 1).unsqueeze(0)
    if context_len == 0 and sliding_window is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                             enable_gqa=True)
    else:
        query_pos = torch.arange(context_len, context_len + num_new).unsqueeze(1)
        key_pos = torch.arange(num_keys).unsqueeze(0)
        mask = key_pos <= query_pos
        if sliding_window is not None:
            mask &= key_pos > query_pos - sliding_window
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                             enable_gqa=True)
    return out.squeeze(0).transpose(0, 1).to(query.dtype)


def decode_key_mask(seq_lens: list[int], padded_len: int,
                    sliding_window: int | None = None) -> torch.Tensor:
    """Additive mask [B, padded_len] for `paged_decode_attention`: key j of sequence b counts iff
    j < seq_lens[b] (and j >= seq_lens[b] - sliding_window)."""
    lens = torch.tensor(seq_lens).unsqueeze(1)
    key_pos = torch.arange(padded_len).unsqueeze(0)
    keep = key_pos < lens
    if sliding_window is not None:
        keep &= key_pos >= lens - sliding_window
    return torch.zeros(keep.shape, dtype=torch.float32).masked_fill_(~keep, float("-inf"))
