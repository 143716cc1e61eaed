"""Writes new keys and values into the paged KV cache (csrc/kv_store.c); the torch reference
is kernels/paged_attention.py's `store_kv_cache`."""
from __future__ import annotations

import torch

from infernetes.kernels.cpu.launch import (
    check_heads_contiguous, check_int64, check_same_dtype, dtype_code)
from infernetes.kernels.cpu.library import library


def store_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                   value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """key, value: [num_tokens, num_kv_heads, head_dim] (heads and dims contiguous);
    caches: [num_blocks, num_kv_heads, block_size, head_dim] contiguous; slot_mapping:
    [num_tokens] int64, slots below 0 skipped."""
    code = dtype_code("key", key)
    check_same_dtype("key", key, value=value, key_cache=key_cache, value_cache=value_cache)
    if key.dim() != 3 or value.shape != key.shape:
        raise ValueError(f"key, value: expected [num_tokens, num_kv_heads, head_dim] each, "
                         f"got {tuple(key.shape)} and {tuple(value.shape)}")
    num_tokens, num_kv_heads, head_dim = key.shape
    check_heads_contiguous("key", key)
    check_heads_contiguous("value", value)
    if key_cache.dim() != 4 or key_cache.shape[1] != num_kv_heads \
            or key_cache.shape[3] != head_dim or value_cache.shape != key_cache.shape \
            or not key_cache.is_contiguous() or not value_cache.is_contiguous():
        raise ValueError(f"caches: expected contiguous [num_blocks, {num_kv_heads}, "
                         f"block_size, {head_dim}], got {tuple(key_cache.shape)} and "
                         f"{tuple(value_cache.shape)}")
    check_int64("slot_mapping", slot_mapping, (num_tokens,))
    library().ifn_kv_store(key.data_ptr(), key.stride(0), value.data_ptr(), value.stride(0),
                           key_cache.data_ptr(), value_cache.data_ptr(),
                           slot_mapping.data_ptr(), num_tokens, num_kv_heads, head_dim,
                           key_cache.shape[2], code)
