"""Decode attention over the paged KV cache (csrc/decode_attention.c): one query token per
sequence. The torch reference is kernels/paged_attention.py's `paged_decode_attention`."""
from __future__ import annotations

import torch

from infernetes.kernels.cpu.launch import (
    check_heads_contiguous, check_int64, check_same_dtype, dtype_code, num_threads)
from infernetes.kernels.cpu.library import library


def paged_decode_attention(query: torch.Tensor, key_cache: torch.Tensor,
                           value_cache: torch.Tensor, block_tables: torch.Tensor,
                           seq_lens: torch.Tensor, scale: float,
                           sliding_window: int | None = None) -> torch.Tensor:
    """query: [batch, num_heads, head_dim] (heads and dims contiguous); caches: [num_blocks,
    num_kv_heads, block_size, head_dim] contiguous; block_tables: [batch, max_blocks] int64
    contiguous; seq_lens: [batch] int64 (keys incl. the new token; every key's block must be
    in the table). Returns [batch, num_heads, head_dim] in the query's dtype."""
    code = dtype_code("query", query)
    check_same_dtype("query", query, key_cache=key_cache, value_cache=value_cache)
    if query.dim() != 3:
        raise ValueError(f"query: expected [batch, num_heads, head_dim], got shape "
                         f"{tuple(query.shape)}")
    batch, num_heads, head_dim = query.shape
    check_heads_contiguous("query", query)
    if key_cache.dim() != 4 or key_cache.shape[3] != head_dim \
            or value_cache.shape != key_cache.shape or not key_cache.is_contiguous() \
            or not value_cache.is_contiguous():
        raise ValueError(f"caches: expected contiguous [num_blocks, num_kv_heads, block_size, "
                         f"{head_dim}], got {tuple(key_cache.shape)} and "
                         f"{tuple(value_cache.shape)}")
    num_kv_heads = key_cache.shape[1]
    if num_heads % num_kv_heads:
        raise ValueError(f"query: {num_heads} heads do not group onto {num_kv_heads} KV heads")
    check_int64("block_tables", block_tables, (batch, block_tables.shape[-1]))
    check_int64("seq_lens", seq_lens, (batch,))
    out = torch.empty((batch, num_heads, head_dim), dtype=query.dtype)
    if batch:
        status = library().ifn_decode_attention(
            query.data_ptr(), query.stride(0), key_cache.data_ptr(), value_cache.data_ptr(),
            block_tables.data_ptr(), block_tables.shape[1], seq_lens.data_ptr(), out.data_ptr(),
            batch, num_heads, num_kv_heads, head_dim, key_cache.shape[2], sliding_window or 0,
            scale, code, num_threads())
        if status != 0:
            raise MemoryError("paged_decode_attention: out of memory for the scores")
    return out
