"""Attention over a paged KV cache, in torch: the CPU path and the reference for GPU kernels.

Cache layout, per layer: key_cache, value_cache: [num_blocks, num_kv_heads, block_size, head_dim].
Token t of a sequence lives in block `block_table[t // block_size]`, row `t % block_size`; its
flat slot is `block_id * block_size + t % block_size`. Heads before rows, so that the blocks
gathered for a batch, [B, max_blocks, num_kv_heads, block_size, head_dim], are already a batch of
[block_size, head_dim] matrices per (sequence, block, head): decode attention multiplies them
in place instead of copying every key into a per-sequence layout first.

Query heads are grouped onto KV heads as in Hugging Face's `repeat_kv`: query head h reads KV
head h // (num_heads // num_kv_heads). Scores and softmax run in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kv_store_index(slot_mapping: torch.Tensor, num_kv_heads: int,
                   block_size: int) -> torch.Tensor:
    """[num_tokens * num_kv_heads] rows of the cache seen as [-1, head_dim], token-major: where
    `store_kv_cache` writes each (token, head). Computed once per step for every layer."""
    blocks, rows = slot_mapping // block_size, slot_mapping % block_size
    heads = torch.arange(num_kv_heads, device=slot_mapping.device)
    return ((blocks[:, None] * num_kv_heads + heads) * block_size + rows[:, None]).reshape(-1)


def store_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                   value_cache: torch.Tensor, store_index: torch.Tensor) -> None:
    """key, value: [num_tokens, num_kv_heads, head_dim]; store_index from `kv_store_index`."""
    head_dim = key.shape[-1]
    key_cache.view(-1, head_dim).index_copy_(0, store_index,
                                             key.reshape(-1, head_dim).to(key_cache.dtype))
    value_cache.view(-1, head_dim).index_copy_(0, store_index,
                                               value.reshape(-1, head_dim).to(value_cache.dtype))


def gather_sequence_kv(cache: torch.Tensor, block_table: torch.Tensor,
                       num_tokens: int) -> torch.Tensor:
    """One sequence's first `num_tokens` keys (or values): [num_kv_heads, num_tokens, head_dim]."""
    blocks = cache.index_select(0, block_table)  # [num_blocks, H, block_size, D]
    heads, dim = cache.shape[1], cache.shape[3]
    return blocks.transpose(0, 1).reshape(heads, -1, dim)[:, :num_tokens]


def paged_decode_attention(query: torch.Tensor, key_cache: torch.Tensor,
                           value_cache: torch.Tensor, block_tables: torch.Tensor,
                           key_mask: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence.

    query: [B, num_heads, head_dim]; block_tables: [B, max_blocks] (int64);
    key_mask: [B, max_blocks * block_size] additive float32 (0 to attend, -inf to skip).
    Returns [B, num_heads, head_dim] in the query's dtype.
    """
    batch, num_heads, head_dim = query.shape
    num_kv_heads, block_size = key_cache.shape[1], key_cache.shape[2]
    num_blocks = block_tables.shape[1]
    group = num_heads // num_kv_heads
    if batch == 1:  # one sequence: fewer, fused operations win
        keys = gather_sequence_kv(key_cache, block_tables[0], num_blocks * block_size)
        values = gather_sequence_kv(value_cache, block_tables[0], num_blocks * block_size)
        out = F.scaled_dot_product_attention(
            query.float().view(1, num_heads, 1, head_dim), keys.float().unsqueeze(0),
            values.float().unsqueeze(0), attn_mask=key_mask.view(1, 1, 1, -1), scale=scale,
            enable_gqa=True)
        return out.view(1, num_heads, head_dim).to(query.dtype)
    # index_select on the flattened table: about twice as fast as advanced indexing on CPU.
    flat_table = block_tables.reshape(-1)
    keys = key_cache.index_select(0, flat_table).view(batch, num_blocks, num_kv_heads,
                                                       block_size, head_dim).float()
    values = value_cache.index_select(0, flat_table).view(keys.shape).float()
    q = (query.float() * scale).view(batch, 1, num_kv_heads, group, head_dim)
    scores = torch.matmul(q, keys.transpose(-1, -2))  # [B, nb, Hkv, G, bs]
    scores = scores.permute(0, 2, 3, 1, 4).reshape(batch, num_kv_heads, group, -1)
    probs = (scores + key_mask[:, None, None, :]).softmax(dim=-1)
    probs = probs.view(batch, num_kv_heads, group, num_blocks, block_size).permute(0, 3, 1, 2, 4)
    out = torch.matmul(probs, values).sum(dim=1)  # [B, Hkv, G, D]
    return out.reshape(batch, num_heads, head_dim).to(query.dtype)


def prefill_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      context_len: int, scale: float, sliding_window: int | None = None
                      ) -> torch.Tensor:
    """Causal attention of one sequence's new tokens over its whole context.

    query: [num_new, num_heads, head_dim]; key, value: [num_kv_heads, context_len + num_new,
    head_dim] (the cached prefix followed by the new tokens). New token i sits at position
    context_len + i and sees keys 0..context_len + i (the last `sliding_window` of them, if set).
    Returns [num_new, num_heads, head_dim] in the query's dtype.
    """
    num_new = query.shape[0]
    num_keys = key.shape[1]
    q = query.float().transpose(0, 1).unsqueeze(0)
    k = key.float().unsqueeze(0)
    v = value.float().unsqueeze(0)
    if context_len == 0 and sliding_window is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                             enable_gqa=True)
    else:
        query_pos = torch.arange(context_len, context_len + num_new).unsqueeze(1)
        key_pos = torch.arange(num_keys).unsqueeze(0)
        mask = key_pos <= query_pos
        if sliding_window is not None:
            mask &= key_pos > query_pos - sliding_window
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.device), scale=scale,
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
