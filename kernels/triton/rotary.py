"""Rotary position embedding of queries and keys, in place (GPT-NeoX half-rotation layout).

For each head vector x = (x1 | x2) of a token at position p, with (cos | sin) = cos_sin_cache[p]:
    out = (x1 * cos - x2 * sin | x2 * cos + x1 * sin)
which is runtime/layers/rotary.py's `x * cos + rotate_half(x) * sin`. The math runs in float32
and is rounded once to x's dtype. Frequency scalings (llama3, linear) live in the cache built by
`RotaryEmbedding`, so the kernel only reads it; rotary_dim == head_dim.

One program per (token, tile of heads) rotates the tile's query heads and the same-numbered key
heads; positions and the cache row are read on the device, so the launch is CUDA-graph
capturable.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from infernetes.runtime.layers.rotary import apply_rotary as _torch_apply_rotary

# Elements of one (heads x head_dim / 2) tile a program rotates, for queries and keys each.
_TILE_ELEMENTS = 1024


@triton.jit
def _rotate_heads(
    row_ptr,  # [num_heads, head_dim] of one token, rotated in place
    head_stride, heads, num_heads, dims, half_dim,
    cos, sin,  # [BLOCK_HALF] float32
):
    mask = (heads[:, None] < num_heads) & (dims[None, :] < half_dim)
    first = row_ptr + heads[:, None] * head_stride + dims[None, :]
    x1 = tl.load(first, mask=mask, other=0.0)
    x2 = tl.load(first + half_dim, mask=mask, other=0.0)
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    tl.store(first, (x1f * cos[None, :] - x2f * sin[None, :]).to(x1.dtype), mask=mask)
    tl.store(first + half_dim, (x2f * cos[None, :] + x1f * sin[None, :]).to(x1.dtype),
             mask=mask)


@triton.jit
def _rotary_kernel(
    query_ptr,  # [num_tokens, num_heads, head_dim], rotated in place
    key_ptr,  # [num_tokens, num_kv_heads, head_dim], rotated in place
    positions_ptr,  # [num_tokens] int64
    cos_sin_ptr,  # [max_position, head_dim] float32: cos | sin halves
    query_stride_t, query_stride_h, key_stride_t, key_stride_h,
    positions_stride, cos_sin_stride,
    num_heads, num_kv_heads, half_dim,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_HALF)
    position = tl.load(positions_ptr + token * positions_stride)
    cos_sin_row = cos_sin_ptr + position * cos_sin_stride
    cos = tl.load(cos_sin_row + dims, mask=dims < half_dim, other=0.0)
    sin = tl.load(cos_sin_row + half_dim + dims, mask=dims < half_dim, other=0.0)
    _rotate_heads(query_ptr + token * query_stride_t, query_stride_h, heads, num_heads,
                  dims, half_dim, cos, sin)
    _rotate_heads(key_ptr + token * key_stride_t, key_stride_h, heads, num_kv_heads,
                  dims, half_dim, cos, sin)


def apply_rotary(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor,
                 cos_sin_cache: torch.Tensor) -> None:
    """Rotate query and key in place by their tokens' positions.

    query: [num_tokens, num_heads, head_dim]; key: [num_tokens, num_kv_heads, head_dim] (any
    token/head strides, e.g. views into a fused QKV projection; unit stride on head_dim; they
    must not overlap); positions: [num_tokens] int64; cos_sin_cache: [max_position, head_dim]
    float32, cos | sin halves (`RotaryEmbedding.cos_sin`).
    Positions must be in [0, max_position): they are not checked (that would need a host sync).
    """
    _check_inputs(query, key, positions, cos_sin_cache)
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    if num_tokens == 0:
        return
    half_dim = head_dim // 2
    block_half = triton.next_power_of_2(half_dim)
    widest = max(num_heads, num_kv_heads)
    block_h = min(triton.next_power_of_2(widest), max(1, _TILE_ELEMENTS // block_half))
    grid = (num_tokens, triton.cdiv(widest, block_h))
    _rotary_kernel[grid](
        query, key, positions, cos_sin_cache,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1),
        positions.stride(0), cos_sin_cache.stride(0),
        num_heads, num_kv_heads, half_dim,
        BLOCK_H=block_h, BLOCK_HALF=block_half,
    )


def _check_inputs(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor,
                  cos_sin_cache: torch.Tensor) -> None:
    if query.dim() != 3:
        raise ValueError(f"query: expected [num_tokens, num_heads, head_dim], got shape "
                         f"{tuple(query.shape)}")
    num_tokens, _, head_dim = query.shape
    if head_dim % 2:
        raise ValueError(f"query: head_dim must be even, got {head_dim}")
    if key.dim() != 3 or key.shape[0] != num_tokens or key.shape[2] != head_dim:
        raise ValueError(f"key: expected [{num_tokens}, num_kv_heads, {head_dim}], got shape "
                         f"{tuple(key.shape)}")
    if positions.shape != (num_tokens,):
        raise ValueError(f"positions: expected shape ({num_tokens},), got "
                         f"{tuple(positions.shape)}")
    if positions.dtype != torch.int64:
        raise ValueError(f"positions: expected int64, got {positions.dtype}")
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != head_dim:
        raise ValueError(f"cos_sin_cache: expected [max_position, {head_dim}], got shape "
                         f"{tuple(cos_sin_cache.shape)}")
    if cos_sin_cache.dtype != torch.float32:
        raise ValueError(f"cos_sin_cache: expected float32, got {cos_sin_cache.dtype}")
    for name, tensor in (("query", query), ("key", key), ("cos_sin_cache", cos_sin_cache)):
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"{name}: expected a floating-point dtype, got {tensor.dtype}")
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name}: head_dim must have unit stride, got strides "
                             f"{tensor.stride()}")
    for name, tensor in (("key", key), ("positions", positions),
                         ("cos_sin_cache", cos_sin_cache)):
        if tensor.device != query.device:
            raise ValueError(f"{name}: on {tensor.device}, query on {query.device}")


def reference_apply_rotary(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor,
                           cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Out of place: the rotated (query, key), via runtime/layers/rotary.py's `apply_rotary` in
    float32, rounded to each input's dtype.

    query: [num_tokens, num_heads, head_dim]; key: [num_tokens, num_kv_heads, head_dim];
    positions: [num_tokens] int64; cos_sin_cache: [max_position, head_dim] float32.
    """
    cos, sin = cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    return (_torch_apply_rotary(query.float(), cos, sin).to(query.dtype),
            _torch_apply_rotary(key.float(), cos, sin).to(key.dtype))
