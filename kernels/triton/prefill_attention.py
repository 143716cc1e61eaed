"""Paged prefill/extend attention for a variable-length batch (chunked prefill, prefix-cache hits).

Each sequence of the batch brings a chunk of new tokens; their K/V are already in the paged cache
(the engine stores before it attends), behind `context_len` tokens cached by earlier steps. New
token i of a sequence sits at position context_len + i and attends to keys 0..context_len + i,
only the last `sliding_window` of them if set (key > position - window), as in
`kernels.paged_attention.prefill_attention`.

Kernel (flash-attention forward, online softmax in float32): one program per (query head, tile of
BLOCK_M new tokens, sequence). It walks the keys that tile can see in tiles of BLOCK_N, each key
row found through the block table, so BLOCK_N does not depend on the cache's block size. Key tiles
split in three runs: below the window's edge (masked; only with a window), fully visible to every
query of the tile (no mask), and the causal diagonal (masked). Tiles no query of the tile can see
are never loaded, nor their block-table entries: blocks that slid out of the window may hold
anything. Programs for tiles past a sequence's chunk return at once; heavy (late) tiles of a
chunk are launched first.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from infernetes.kernels.paged_attention import gather_sequence_kv, prefill_attention

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
MAX_BLOCK_SIZE = 256
_MAX_GRID_YZ = 65535  # CUDA's limit on grid dimensions 1 and 2


class TileConfig(NamedTuple):
    """Launch shape: BLOCK_M query tokens x BLOCK_N keys per step (both >= 16: tensor cores)."""
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_tile_config(head_dim: int, max_query_len: int, dtype: torch.dtype) -> TileConfig:
    """Tiles for H100-class GPUs (checked spill-free for sm_90 with ptxas). BLOCK_M shrinks for
    short chunks (16..128, a few compiled variants) so a batch of short extends does not compute
    mostly-empty query tiles. float32 (a testing dtype) multiplies in exact IEEE on CUDA cores,
    where only 16 x 16 tiles stay in registers."""
    if dtype == torch.float32:
        return TileConfig(16, 16, 4, 2)
    block_m = min(128, max(16, triton.next_power_of_2(max_query_len)))
    if triton.next_power_of_2(head_dim) > 128:
        block_m = min(block_m, 64)
        return TileConfig(block_m, 32, 4 if block_m <= 32 else 8, 2)
    return TileConfig(block_m, 64, 4 if block_m <= 64 else 8, 3)


@triton.jit
def _attend_key_tile(acc, l_i, m_i, q, query_pos, start_n, key_lo, key_hi,
                     k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head_offset,
                     stride_kb, stride_kt, qk_scale, window,
                     offs_n, offs_d, d_mask,
                     MASKED: tl.constexpr, HAS_WINDOW: tl.constexpr, PAD_D: tl.constexpr,
                     BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One online-softmax step over keys start_n..start_n + BLOCK_N. Rows outside
    [key_lo, key_hi) are not read (MASKED only; unmasked tiles lie inside it)."""
    key_pos = start_n + offs_n  # [BLOCK_N]
    if MASKED:
        key_ok = (key_pos >= key_lo) & (key_pos < key_hi)
        block_ids = tl.load(block_table_ptr + key_pos // BLOCK_SIZE, mask=key_ok, other=0)
    else:
        block_ids = tl.load(block_table_ptr + key_pos // BLOCK_SIZE)
    # int64: block_id * stride_kb overflows int32 on caches past 2^31 elements.
    row_offset = (block_ids.to(tl.int64) * stride_kb + kv_head_offset
                  + (key_pos % BLOCK_SIZE) * stride_kt)
    kv_ptrs = row_offset[:, None] + offs_d[None, :]  # [BLOCK_N, HEAD_DIM_PAD]
    if MASKED:
        load_mask = key_ok[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + kv_ptrs, mask=load_mask, other=0.0)
        v = tl.load(v_cache_ptr + kv_ptrs, mask=load_mask, other=0.0)
    elif PAD_D:
        k = tl.load(k_cache_ptr + kv_ptrs, mask=d_mask[None, :], other=0.0)
        v = tl.load(v_cache_ptr + kv_ptrs, mask=d_mask[None, :], other=0.0)
    else:
        k = tl.load(k_cache_ptr + kv_ptrs)
        v = tl.load(v_cache_ptr + kv_ptrs)

    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # log2 units
    if MASKED:
        visible = key_pos[None, :] <= query_pos[:, None]
        if HAS_WINDOW:
            visible &= key_pos[None, :] > query_pos[:, None] - window
        qk = tl.where(visible, qk, float("-inf"))
    # m_i starts finite, so a row with no visible key yet keeps alpha = 1 and p = 0 (no NaN).
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _prefill_attention_kernel(
        q_ptr,  # [num_tokens, num_heads, head_dim]
        k_cache_ptr, v_cache_ptr,  # [num_blocks, num_kv_heads, block_size, head_dim]
        out_ptr,  # [num_tokens, num_heads, head_dim]
        block_tables_ptr,  # [num_seqs, max_blocks_per_seq] int32
        query_start_loc_ptr,  # [num_seqs + 1] int32
        context_lens_ptr,  # [num_seqs] int32
        qk_scale, window,
        stride_qt, stride_qh, stride_ot, stride_oh, stride_kb, stride_kh, stride_kt, stride_bt,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PAD_D: tl.constexpr, HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr):
    head = tl.program_id(0)
    tile = tl.num_programs(1) - 1 - tl.program_id(1)  # late tiles see more keys: start them first
    seq = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len:
        return
    context_len = tl.load(context_lens_ptr + seq)

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # index in the chunk
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    m_ok = offs_m < q_len
    d_mask = offs_d < HEAD_DIM
    token = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + token[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=m_ok[:, None] & d_mask[None, :], other=0.0)
    query_pos = context_len + offs_m

    first_pos = context_len + tile * BLOCK_M
    last_pos = context_len + tl.minimum(tile * BLOCK_M + BLOCK_M, q_len) - 1
    key_hi = last_pos + 1  # keys past the tile's last query are seen by none of it
    if HAS_WINDOW:
        key_lo = tl.maximum(first_pos - window + 1, 0)
        # Keys from full_lo on are inside every query's window.
        full_lo = tl.cdiv(tl.maximum(last_pos - window + 1, 0), BLOCK_N) * BLOCK_N
    else:
        key_lo = 0
        full_lo = 0
    full_hi = (first_pos + 1) // BLOCK_N * BLOCK_N  # keys below: at or before every query
    full_lo = tl.minimum(full_lo, full_hi)  # a window narrower than the tile: no free run
    start_lo = key_lo // BLOCK_N * BLOCK_N

    kv_head_offset = (head // GROUP).to(tl.int64) * stride_kh
    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    if HAS_WINDOW:  # the window's edge: partly visible tiles
        for start_n in range(start_lo, full_lo, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            acc, l_i, m_i = _attend_key_tile(
                acc, l_i, m_i, q, query_pos, start_n, key_lo, key_hi, k_cache_ptr, v_cache_ptr,
                block_table_ptr, kv_head_offset, stride_kb, stride_kt, qk_scale, window,
                offs_n, offs_d, d_mask, True, HAS_WINDOW, PAD_D, BLOCK_SIZE, DOT_PRECISION)
    for start_n in range(full_lo, full_hi, BLOCK_N):  # every key visible to every query
        start_n = tl.multiple_of(start_n, BLOCK_N)
        acc, l_i, m_i = _attend_key_tile(
            acc, l_i, m_i, q, query_pos, start_n, key_lo, key_hi, k_cache_ptr, v_cache_ptr,
            block_table_ptr, kv_head_offset, stride_kb, stride_kt, qk_scale, window,
            offs_n, offs_d, d_mask, False, HAS_WINDOW, PAD_D, BLOCK_SIZE, DOT_PRECISION)
    for start_n in range(full_hi, key_hi, BLOCK_N):  # the causal diagonal
        start_n = tl.multiple_of(start_n, BLOCK_N)
        acc, l_i, m_i = _attend_key_tile(
            acc, l_i, m_i, q, query_pos, start_n, key_lo, key_hi, k_cache_ptr, v_cache_ptr,
            block_table_ptr, kv_head_offset, stride_kb, stride_kt, qk_scale, window,
            offs_n, offs_d, d_mask, True, HAS_WINDOW, PAD_D, BLOCK_SIZE, DOT_PRECISION)

    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # only rows past the chunk, which are not stored
    acc = acc / l_i[:, None]
    tl.store(out_ptr + token[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_mask[None, :])


def _check_inputs(query, key_cache, value_cache, block_tables, query_start_loc, context_lens,
                  max_query_len, sliding_window, out) -> None:
    """ValueError naming the argument for anything the kernel cannot run on."""
    if query.dim() != 3:
        raise ValueError(f"query: expected [num_tokens, num_heads, head_dim], "
                         f"got {tuple(query.shape)}")
    if query.dtype not in _DTYPES:
        raise ValueError(f"query: dtype {query.dtype} not in {_DTYPES}")
    num_tokens, num_heads, head_dim = query.shape
    if not 16 <= head_dim <= MAX_HEAD_DIM or head_dim % 8:
        raise ValueError(f"query: head_dim {head_dim} must be a multiple of 8 in "
                         f"16..{MAX_HEAD_DIM}")
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if cache.dim() != 4:
            raise ValueError(f"{name}: expected [num_blocks, num_kv_heads, block_size, head_dim], "
                             f"got {tuple(cache.shape)}")
        if cache.dtype != query.dtype:
            raise ValueError(f"{name}: dtype {cache.dtype} differs from query's {query.dtype}")
        if cache.shape[3] != head_dim:
            raise ValueError(f"{name}: head_dim {cache.shape[3]} differs from query's {head_dim}")
        if cache.shape != key_cache.shape:
            raise ValueError(f"{name}: shape {tuple(cache.shape)} differs from key_cache's "
                             f"{tuple(key_cache.shape)}")
    num_kv_heads, block_size = key_cache.shape[1], key_cache.shape[2]
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"key_cache: num_heads {num_heads} is not a multiple of "
                         f"num_kv_heads {num_kv_heads}")
    if not 1 <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise ValueError(f"key_cache: block_size {block_size} must be a power of two in "
                         f"1..{MAX_BLOCK_SIZE}")
    if block_tables.dim() != 2:
        raise ValueError(f"block_tables: expected [num_seqs, max_blocks_per_seq], "
                         f"got {tuple(block_tables.shape)}")
    num_seqs = block_tables.shape[0]
    if num_seqs > _MAX_GRID_YZ:
        raise ValueError(f"block_tables: {num_seqs} sequences, at most {_MAX_GRID_YZ} per launch")
    for name, tensor, shape in (("block_tables", block_tables, None),
                                ("query_start_loc", query_start_loc, (num_seqs + 1,)),
                                ("context_lens", context_lens, (num_seqs,))):
        if shape is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(tensor.shape)}")
        if tensor.dtype != torch.int32:
            raise ValueError(f"{name}: dtype {tensor.dtype}, expected torch.int32")
    if isinstance(max_query_len, bool) or not isinstance(max_query_len, int) \
            or not 0 <= max_query_len <= num_tokens:
        raise ValueError(f"max_query_len: expected a host int in 0..num_tokens ({num_tokens}), "
                         f"got {max_query_len!r}")
    if max_query_len == 0 and num_tokens:
        raise ValueError("max_query_len: 0 with query tokens to attend")
    if sliding_window is not None and (isinstance(sliding_window, bool)
                                       or not isinstance(sliding_window, int)
                                       or sliding_window < 1):
        raise ValueError(f"sliding_window: expected None or an int >= 1, got {sliding_window!r}")
    if out is not None:
        if out.shape != query.shape or out.dtype != query.dtype:
            raise ValueError(f"out: expected {tuple(query.shape)} {query.dtype}, "
                             f"got {tuple(out.shape)} {out.dtype}")
    named = [("query", query), ("key_cache", key_cache), ("value_cache", value_cache),
             ("block_tables", block_tables), ("query_start_loc", query_start_loc),
             ("context_lens", context_lens)] + ([("out", out)] if out is not None else [])
    for name, tensor in named:
        if tensor.device != query.device:
            raise ValueError(f"{name}: on {tensor.device}, query on {query.device}")
        # query and out may be views (q split from a fused qkv, out[num_decode:]): the kernel
        # takes their token and head strides; head_dim must be dense.
        if name in ("query", "out"):
            if tensor.stride(-1) != 1:
                raise ValueError(f"{name}: head_dim must have stride 1, strides {tensor.stride()}")
        elif not tensor.is_contiguous():
            raise ValueError(f"{name}: must be contiguous")


def paged_prefill_attention(query: torch.Tensor, key_cache: torch.Tensor,
                            value_cache: torch.Tensor, block_tables: torch.Tensor,
                            query_start_loc: torch.Tensor, context_lens: torch.Tensor,
                            max_query_len: int, scale: float, sliding_window: int | None = None,
                            out: torch.Tensor | None = None, *,
                            tile_config: TileConfig | None = None) -> torch.Tensor:
    """Causal attention of every sequence's new tokens over its cached context and themselves.

    query: [num_tokens, num_heads, head_dim], the chunks of all sequences back to back;
    key_cache, value_cache: [num_blocks, num_kv_heads, block_size, head_dim], the new tokens'
    K/V already stored; block_tables: [num_seqs, max_blocks_per_seq] int32, covering
    context_lens[s] + chunk length tokens (entries past that are never read);
    query_start_loc: [num_seqs + 1] int32, prefix sums of the chunk lengths;
    context_lens: [num_seqs] int32, tokens cached before this chunk;
    max_query_len: host int >= every chunk's length (sizes the grid; tokens of a longer chunk
    would be left unwritten); out: optional [num_tokens, num_heads, head_dim] to write into.
    query and out may be strided over tokens and heads (head_dim dense); the rest contiguous.
    Returns out (or a new tensor) in the query's dtype. No device-to-host sync.
    """
    _check_inputs(query, key_cache, value_cache, block_tables, query_start_loc, context_lens,
                  max_query_len, sliding_window, out)
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    num_tokens, num_heads, head_dim = query.shape
    num_seqs = block_tables.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    config = tile_config or default_tile_config(head_dim, max_query_len, query.dtype)
    if min(config.block_m, config.block_n) < 16 or any(
            size & (size - 1) for size in (config.block_m, config.block_n)):
        raise ValueError(f"tile_config: block_m and block_n must be powers of two >= 16, "
                         f"got {config}")
    num_tiles = triton.cdiv(max_query_len, config.block_m)
    if num_tiles > _MAX_GRID_YZ:
        raise ValueError(f"max_query_len: {max_query_len} needs {num_tiles} query tiles, "
                         f"more than {_MAX_GRID_YZ}")
    grid = (num_heads, num_tiles, num_seqs)
    _prefill_attention_kernel[grid](
        query, key_cache, value_cache, out, block_tables, query_start_loc, context_lens,
        scale * 1.4426950408889634, sliding_window or 0,  # scale * log2(e): softmax via exp2
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        GROUP=num_heads // key_cache.shape[1], HEAD_DIM=head_dim,
        HEAD_DIM_PAD=triton.next_power_of_2(head_dim),
        PAD_D=head_dim != triton.next_power_of_2(head_dim), BLOCK_SIZE=key_cache.shape[2],
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, HAS_WINDOW=sliding_window is not None,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out


def reference_paged_prefill_attention(query: torch.Tensor, key_cache: torch.Tensor,
                                      value_cache: torch.Tensor, block_tables: torch.Tensor,
                                      query_start_loc: torch.Tensor, context_lens: torch.Tensor,
                                      max_query_len: int, scale: float,
                                      sliding_window: int | None = None,
                                      out: torch.Tensor | None = None) -> torch.Tensor:
    """The same op, naively: per sequence, gather its keys and run the torch prefill in float32."""
    if out is None:
        out = torch.empty_like(query)
    block_size = key_cache.shape[2]
    starts = query_start_loc.tolist()
    for seq, context_len in enumerate(context_lens.tolist()):
        start, end = starts[seq], starts[seq + 1]
        num_keys = context_len + end - start
        table = block_tables[seq, :triton.cdiv(num_keys, block_size)].long()
        keys = gather_sequence_kv(key_cache, table, num_keys).float()
        values = gather_sequence_kv(value_cache, table, num_keys).float()
        out[start:end] = prefill_attention(query[start:end].float(), keys, values, context_len,
                                           scale, sliding_window).to(out.dtype)
    return out
