"""Write a step's new keys and values into the paged KV cache.

Cache layout, per layer: key_cache, value_cache: [num_blocks, num_kv_heads, block_size, head_dim]
(see kernels/paged_attention.py). Token t goes to slot `slot_mapping[t] = block_id * block_size +
row`, i.e. `cache[block_id, :, row, :]`. A negative slot marks a padding token (CUDA-graph
batches are padded with -1): it is skipped, and its key and value are never read.

One program per (token, tile of KV heads): the slot is loaded once per program, so the launcher
never reads slot_mapping on the host and the launch is CUDA-graph capturable.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from infernetes.kernels.paged_attention import kv_store_index
from infernetes.kernels.paged_attention import store_kv_cache as _torch_store_kv_cache

# Elements of one (heads x head_dim) tile a program copies, for key and for value each.
_TILE_ELEMENTS = 2048


@triton.jit
def _store_kv_cache_kernel(
    key_ptr,  # [num_tokens, num_kv_heads, head_dim]
    value_ptr,  # [num_tokens, num_kv_heads, head_dim]
    key_cache_ptr,  # [num_blocks, num_kv_heads, block_size, head_dim]
    value_cache_ptr,  # [num_blocks, num_kv_heads, block_size, head_dim]
    slot_mapping_ptr,  # [num_tokens] int64; < 0: padding, skipped
    key_stride_t, key_stride_h,
    value_stride_t, value_stride_h,
    key_cache_stride_b, key_cache_stride_h, key_cache_stride_r,
    value_cache_stride_b, value_cache_stride_h, value_cache_stride_r,
    slot_stride,
    num_kv_heads, head_dim, block_size,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    slot = tl.load(slot_mapping_ptr + token * slot_stride)
    # A padding token gets no heads: it folds into the mask, with no divergent control flow.
    # (A scalar `slot >= 0` and-ed into the mask would be simpler, but the interpreter mistypes
    # scalar & tensor masks.)
    num_heads_to_store = tl.where(slot >= 0, num_kv_heads, 0)
    mask = (heads[:, None] < num_heads_to_store) & (dims[None, :] < head_dim)
    block = slot // block_size
    row = slot % block_size

    src = heads[:, None] * key_stride_h + dims[None, :]
    key = tl.load(key_ptr + token * key_stride_t + src, mask=mask)
    dst = block * key_cache_stride_b + heads[:, None] * key_cache_stride_h \
        + row * key_cache_stride_r + dims[None, :]
    tl.store(key_cache_ptr + dst, key.to(key_cache_ptr.dtype.element_ty), mask=mask)

    src = heads[:, None] * value_stride_h + dims[None, :]
    value = tl.load(value_ptr + token * value_stride_t + src, mask=mask)
    dst = block * value_cache_stride_b + heads[:, None] * value_cache_stride_h \
        + row * value_cache_stride_r + dims[None, :]
    tl.store(value_cache_ptr + dst, value.to(value_cache_ptr.dtype.element_ty), mask=mask)


def store_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                   value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write key[t], value[t] into the caches at slot_mapping[t], in place, cast to the cache
    dtype; tokens with a negative slot are skipped.

    key, value: [num_tokens, num_kv_heads, head_dim] (any token/head strides, e.g. views into a
    fused QKV projection; unit stride on head_dim);
    key_cache, value_cache: [num_blocks, num_kv_heads, block_size, head_dim] (unit stride on
    head_dim); slot_mapping: [num_tokens] int64.
    Slots must be < num_blocks * block_size: they are not checked (that would need a host sync).
    """
    _check_inputs(key, value, key_cache, value_cache, slot_mapping)
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    block_d = triton.next_power_of_2(head_dim)
    block_h = min(triton.next_power_of_2(num_kv_heads), max(1, _TILE_ELEMENTS // block_d))
    grid = (num_tokens, triton.cdiv(num_kv_heads, block_h))
    _store_kv_cache_kernel[grid](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        slot_mapping.stride(0),
        num_kv_heads, head_dim, key_cache.shape[2],
        BLOCK_H=block_h, BLOCK_D=block_d,
    )


def _check_inputs(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                  value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    if key.dim() != 3:
        raise ValueError(f"key: expected [num_tokens, num_kv_heads, head_dim], got shape "
                         f"{tuple(key.shape)}")
    if value.shape != key.shape:
        raise ValueError(f"value: shape {tuple(value.shape)} differs from key's "
                         f"{tuple(key.shape)}")
    num_tokens, num_kv_heads, head_dim = key.shape
    if key_cache.dim() != 4 or key_cache.shape[1] != num_kv_heads \
            or key_cache.shape[3] != head_dim:
        raise ValueError(f"key_cache: expected [num_blocks, {num_kv_heads}, block_size, "
                         f"{head_dim}], got shape {tuple(key_cache.shape)}")
    if value_cache.shape != key_cache.shape:
        raise ValueError(f"value_cache: shape {tuple(value_cache.shape)} differs from "
                         f"key_cache's {tuple(key_cache.shape)}")
    if slot_mapping.shape != (num_tokens,):
        raise ValueError(f"slot_mapping: expected shape ({num_tokens},), got "
                         f"{tuple(slot_mapping.shape)}")
    if slot_mapping.dtype != torch.int64:
        raise ValueError(f"slot_mapping: expected int64, got {slot_mapping.dtype}")
    for name, tensor in (("key", key), ("value", value), ("key_cache", key_cache),
                         ("value_cache", value_cache)):
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"{name}: expected a floating-point dtype, got {tensor.dtype}")
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name}: head_dim must have unit stride, got strides "
                             f"{tensor.stride()}")
    for name, tensor in (("value", value), ("key_cache", key_cache),
                         ("value_cache", value_cache), ("slot_mapping", slot_mapping)):
        if tensor.device != key.device:
            raise ValueError(f"{name}: on {tensor.device}, key on {key.device}")


def reference_store_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                             value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """The torch path (kernels/paged_attention.py), with padding slots (< 0) dropped first.
    Dropping them reads the mask on the host: fine for a reference, not for a CUDA graph.

    key, value: [num_tokens, num_kv_heads, head_dim]; key_cache, value_cache: [num_blocks,
    num_kv_heads, block_size, head_dim]; slot_mapping: [num_tokens] int64.
    """
    keep = slot_mapping >= 0
    index = kv_store_index(slot_mapping[keep], key_cache.shape[1], key_cache.shape[2])
    _torch_store_kv_cache(key[keep], value[keep], key_cache, value_cache, index)
