"""Paged decode attention, split over the KV sequence (flash-decoding), in Triton.

One query token per sequence attends over its keys in the paged cache
([num_blocks, num_kv_heads, block_size, head_dim], as in `kernels/paged_attention.py`).

Pass 1, `_split_kv_kernel`, grid (num_seqs, num_kv_heads, num_splits): a program owns one
(sequence, KV head, split). It loads the whole GQA group of query heads that read this KV head as
one [BLOCK_G, BLOCK_D] tile (group padded to >= 16 rows for `tl.dot`, head_dim padded to a power
of two), so each key and value is read from memory once per KV head, not once per query head.
Split s covers the table's blocks [s * blocks_per_split, (s + 1) * blocks_per_split); the program
walks that range in tiles of BLOCK_N keys, looking up each key's block id in the block table, so a
tile may span many small cache blocks or part of a large one. Online softmax runs in float32 in
the log2 domain. Its result per query head is the split's normalized output and log2-sum-exp,
written to float32 scratch; a split with no key to read (past the sequence's end, or before its
sliding window) writes output 0 and log2-sum-exp -inf.

Pass 2, `_reduce_splits_kernel`, grid (num_seqs, num_heads): merges the splits' outputs weighted
by exp2(lse_s - max lse), in chunks of splits with a running rescale. With one split, pass 1
writes the normalized output straight into `out` and pass 2 is not launched.

The host never reads `seq_lens` or `block_tables`: the number of splits comes from shapes alone
(and the device's SM count), so a call can be captured in a CUDA graph and never syncs.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# 64..256: the models served; 16 and 32: tiny test models. Others (e.g. 72) are rejected.
SUPPORTED_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Heuristic for the number of splits: enough programs to keep every SM busy with a few CTAs, but
# no split shorter than MIN_KEYS_PER_SPLIT keys (below that the merge costs more than it saves).
TARGET_PROGRAMS_PER_SM = 4
MIN_KEYS_PER_SPLIT = 128
MAX_SPLITS = 64
# Rows of the query-head tile: `tl.dot` needs M >= 16 on NVIDIA GPUs.
MIN_GROUP_TILE = 16
# Splits merged per step of the reduction loop.
SPLIT_CHUNK = 16


@triton.jit
def _split_kv_kernel(
    query_ptr,  # [num_seqs, num_heads, head_dim]
    key_cache_ptr,  # [num_blocks, num_kv_heads, block_size, head_dim]
    value_cache_ptr,  # [num_blocks, num_kv_heads, block_size, head_dim]
    block_tables_ptr,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens_ptr,  # [num_seqs] int32
    # WRITE_OUTPUT: the output [num_seqs, num_heads, head_dim] (query dtype), stride_po_split 0;
    # else [num_seqs, num_heads, num_splits, head_dim] float32 scratch.
    partial_out_ptr,
    partial_lse_ptr,  # [num_seqs, num_heads, num_splits] float32 (unused when WRITE_OUTPUT)
    scale, sliding_window, blocks_per_split, max_blocks_per_seq,
    stride_q_seq, stride_q_head,
    stride_k_block, stride_k_head, stride_k_row,
    stride_v_block, stride_v_head, stride_v_row,
    stride_table_seq,
    stride_po_seq, stride_po_head, stride_po_split,
    stride_pl_seq, stride_pl_head,
    GROUP_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    TILE_ALIGN: tl.constexpr, USE_WINDOW: tl.constexpr, WRITE_OUTPUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    # Keys past the table's capacity are ignored rather than read out of bounds.
    seq_len = tl.minimum(tl.load(seq_lens_ptr + seq), max_blocks_per_seq * BLOCK_SIZE)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    g_mask = offs_g < GROUP_SIZE
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * GROUP_SIZE + offs_g  # the query heads that read this KV head
    q = tl.load(query_ptr + seq * stride_q_seq + heads[:, None] * stride_q_head + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]
    qk_scale = scale * 1.4426950408889634  # exp(x) == exp2(x * log2(e))

    split_lo = split * blocks_per_split * BLOCK_SIZE
    split_hi = tl.minimum(split_lo + blocks_per_split * BLOCK_SIZE, seq_len)
    first_key = split_lo
    if USE_WINDOW:
        first_key = tl.maximum(split_lo, seq_len - sliding_window)
    # Tiles start on a cache-block (or tile) boundary: whole blocks are contiguous in memory.
    tile_lo = split_lo + (first_key - split_lo) // TILE_ALIGN * TILE_ALIGN

    table_row = block_tables_ptr + seq * stride_table_seq
    k_head = key_cache_ptr + kv_head * stride_k_head
    v_head = value_cache_ptr + kv_head * stride_v_head
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    # Invariant: every tile holds at least one valid key (its start is <= first_key, or >= it and
    # < split_hi), so m_new is finite and no exp2 sees -inf - -inf.
    for tile_start in range(tile_lo, split_hi, BLOCK_N):
        keys = tile_start + offs_n
        valid = (keys >= first_key) & (keys < split_hi)
        # Masked: table entries and cache rows outside [first_key, split_hi) are never read.
        block_ids = tl.load(table_row + keys // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        rows = keys % BLOCK_SIZE
        k_offs = block_ids * stride_k_block + rows * stride_k_row  # [BLOCK_N] int64
        v_offs = block_ids * stride_v_block + rows * stride_v_row  # [BLOCK_N] int64
        k = tl.load(k_head + k_offs[None, :] + offs_d[:, None],
                    mask=valid[None, :] & d_mask[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_G, BLOCK_N]
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_head + v_offs[:, None] + offs_d[None, :],
                    mask=valid[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    # An empty split (l_i == 0) stores output 0 and lse -inf: it weighs nothing in the merge.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    result = acc / l_safe[:, None]
    po = (partial_out_ptr + seq * stride_po_seq + heads[:, None] * stride_po_head
          + split * stride_po_split + offs_d[None, :])
    tl.store(po, result.to(partial_out_ptr.dtype.element_ty),
             mask=g_mask[:, None] & d_mask[None, :])
    if not WRITE_OUTPUT:
        lse = m_i + tl.log2(l_safe)  # log2-sum-exp of the split's scaled scores
        tl.store(partial_lse_ptr + seq * stride_pl_seq + heads * stride_pl_head + split, lse,
                 mask=g_mask)


@triton.jit
def _reduce_splits_kernel(
    partial_out_ptr,  # [num_seqs, num_heads, num_splits, head_dim] float32
    partial_lse_ptr,  # [num_seqs, num_heads, num_splits] float32
    out_ptr,  # [num_seqs, num_heads, head_dim]
    num_splits,
    stride_po_seq, stride_po_head, stride_po_split,
    stride_pl_seq, stride_pl_head,
    stride_out_seq, stride_out_head,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT_CHUNK: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, SPLIT_CHUNK)
    d_mask = offs_d < HEAD_DIM
    po_head = partial_out_ptr + seq * stride_po_seq + head * stride_po_head
    pl_head = partial_lse_ptr + seq * stride_pl_seq + head * stride_pl_head

    m = float("-inf")
    denom = 0.0
    acc = tl.zeros([BLOCK_D], tl.float32)
    for chunk in range(0, num_splits, SPLIT_CHUNK):
        splits = chunk + offs_s
        s_mask = splits < num_splits
        lse = tl.load(pl_head + splits, mask=s_mask, other=float("-inf"))  # [SPLIT_CHUNK]
        part = tl.load(po_head + splits[:, None] * stride_po_split + offs_d[None, :],
                       mask=s_mask[:, None] & d_mask[None, :], other=0.0)  # [SPLIT_CHUNK, BLOCK_D]
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        # All splits so far empty (a window that starts in a later split): keep weights 0.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        weights = tl.exp2(lse - m_safe)
        acc = acc * alpha + tl.sum(weights[:, None] * part, axis=0)
        denom = denom * alpha + tl.sum(weights, axis=0)
        m = m_new
    # denom == 0 only for a sequence with no keys (seq_len 0): its output is 0.
    result = acc / tl.where(denom > 0.0, denom, 1.0)
    tl.store(out_ptr + seq * stride_out_seq + head * stride_out_head + offs_d,
             result.to(out_ptr.dtype.element_ty), mask=d_mask)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_blocks_per_seq: int,
                      block_size: int, num_sms: int) -> int:
    """Splits per (sequence, KV head), from shapes only: enough for about
    TARGET_PROGRAMS_PER_SM programs per SM, with at least MIN_KEYS_PER_SPLIT keys per split of
    the table's width, at most MAX_SPLITS. The table's width, not the sequences' lengths, bounds
    it: a table padded far beyond the longest sequence yields splits that end up empty."""
    programs = num_seqs * num_kv_heads
    wanted = max(1, -(-TARGET_PROGRAMS_PER_SM * num_sms // max(programs, 1)))
    longest_splits = max(1, max_blocks_per_seq * block_size // MIN_KEYS_PER_SPLIT)
    splits = min(wanted, longest_splits, MAX_SPLITS)
    # As many splits as the block ranges need: ceil(max_blocks / ceil(max_blocks / splits)).
    blocks_per_split = -(-max_blocks_per_seq // splits)
    return -(-max_blocks_per_seq // blocks_per_split)


def _check_query_and_cache(query, key_cache, value_cache) -> None:
    """Shapes, dtypes, head_dim, block_size and layout of the query and the caches; raises
    ValueError naming the first argument that the kernels cannot take."""
    if query.dim() != 3:
        raise ValueError(f"query must be [num_seqs, num_heads, head_dim], got {tuple(query.shape)}")
    if key_cache.dim() != 4:
        raise ValueError("key_cache must be [num_blocks, num_kv_heads, block_size, head_dim], "
                         f"got {tuple(key_cache.shape)}")
    if value_cache.shape != key_cache.shape:
        raise ValueError(f"value_cache shape {tuple(value_cache.shape)} differs from key_cache "
                         f"shape {tuple(key_cache.shape)}")
    num_seqs, num_heads, head_dim = query.shape
    _, num_kv_heads, block_size, cache_head_dim = key_cache.shape
    if query.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"query dtype {query.dtype} is not one of {SUPPORTED_DTYPES}")
    for name, tensor in (("key_cache", key_cache), ("value_cache", value_cache)):
        if tensor.dtype != query.dtype:
            raise ValueError(f"{name} dtype {tensor.dtype} differs from query dtype {query.dtype}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"query head_dim {head_dim} is not one of {SUPPORTED_HEAD_DIMS}")
    if cache_head_dim != head_dim:
        raise ValueError(f"key_cache head_dim {cache_head_dim} differs from query's {head_dim}")
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"key_cache block_size {block_size} is not a power of two")
    if num_heads % num_kv_heads:
        raise ValueError(f"query num_heads {num_heads} is not a multiple of key_cache "
                         f"num_kv_heads {num_kv_heads}")
    for name, tensor in (("query", query), ("key_cache", key_cache), ("value_cache", value_cache)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must have stride 1 along head_dim, got {tensor.stride(-1)}")
    if query.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"query is on {query.device}: the kernels need a CUDA device "
                         "(or TRITON_INTERPRET=1 set before triton is imported)")


def _check_table_and_options(query, key_cache, value_cache, block_tables, seq_lens,
                             sliding_window, num_splits, out) -> None:
    """The block table, lengths, options, `out` and devices; raises ValueError naming the
    first argument that the kernels cannot take."""
    num_seqs = query.shape[0]
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs or block_tables.shape[1] < 1:
        raise ValueError(f"block_tables must be [num_seqs={num_seqs}, max_blocks_per_seq >= 1], "
                         f"got {tuple(block_tables.shape)}")
    if seq_lens.dim() != 1 or seq_lens.shape[0] != num_seqs:
        raise ValueError(f"seq_lens must be [num_seqs={num_seqs}], got {tuple(seq_lens.shape)}")
    for name, tensor in (("block_tables", block_tables), ("seq_lens", seq_lens)):
        if tensor.dtype != torch.int32:
            raise ValueError(f"{name} dtype must be torch.int32, got {tensor.dtype}")
    if block_tables.stride(1) != 1 and block_tables.shape[1] > 1:
        raise ValueError("block_tables rows must be contiguous (stride 1 along max_blocks_per_seq)")
    if not seq_lens.is_contiguous():
        raise ValueError("seq_lens must be contiguous")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be None or >= 1, got {sliding_window}")
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be None or >= 1, got {num_splits}")
    if out is not None:
        if out.shape != query.shape or out.dtype != query.dtype:
            raise ValueError(f"out must be {tuple(query.shape)} {query.dtype}, "
                             f"got {tuple(out.shape)} {out.dtype}")
        if out.stride(-1) != 1:
            raise ValueError(f"out must have stride 1 along head_dim, got {out.stride(-1)}")
    tensors = {"key_cache": key_cache, "value_cache": value_cache, "block_tables": block_tables,
               "seq_lens": seq_lens, "out": out}
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != query.device:
            raise ValueError(f"{name} is on {tensor.device}, query on {query.device}")


def paged_decode_attention(query: torch.Tensor, key_cache: torch.Tensor,
                           value_cache: torch.Tensor, block_tables: torch.Tensor,
                           seq_lens: torch.Tensor, scale: float,
                           sliding_window: int | None = None, num_splits: int | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query token per sequence over its paged KV cache.

    query: [num_seqs, num_heads, head_dim]; key_cache, value_cache: [num_blocks, num_kv_heads,
    block_size, head_dim], same dtype as query (fp16, bf16 or fp32); block_tables:
    [num_seqs, max_blocks_per_seq] int32; seq_lens: [num_seqs] int32, keys per sequence including
    the current token (a sequence of length 0, e.g. CUDA-graph padding, gets output 0; a length
    past max_blocks_per_seq * block_size counts as that). Key j of a sequence of length L counts
    iff j < L and, with sliding_window, j >= L - sliding_window; table entries for blocks holding
    no such key are never read. num_splits overrides the heuristic (`choose_num_splits`).
    out: optional [num_seqs, num_heads, head_dim] in query dtype (any strides but the last),
    written and returned (for CUDA-graph capture). Returns [num_seqs, num_heads, head_dim].
    """
    _check_query_and_cache(query, key_cache, value_cache)
    _check_table_and_options(query, key_cache, value_cache, block_tables, seq_lens,
                             sliding_window, num_splits, out)
    num_seqs, num_heads, head_dim = query.shape
    _, num_kv_heads, block_size, _ = key_cache.shape
    max_blocks_per_seq = block_tables.shape[1]
    if out is None:
        out = torch.empty_like(query, memory_format=torch.contiguous_format)
    if num_seqs == 0:
        return out
    if num_splits is None:
        num_sms = _sm_count(query.device.index or 0) if query.device.type == "cuda" else 1
        num_splits = choose_num_splits(num_seqs, num_kv_heads, max_blocks_per_seq, block_size,
                                       num_sms)
    blocks_per_split = -(-max_blocks_per_seq // num_splits)
    group_size = num_heads // num_kv_heads
    block_d = triton.next_power_of_2(head_dim)
    block_n = 64 if head_dim <= 128 else 32
    write_output = num_splits == 1
    if write_output:
        partial_out, partial_lse = out, out  # pass 1 writes the output; lse is not stored
        po_strides = (out.stride(0), out.stride(1), 0)
        pl_strides = (0, 0)
    else:
        partial_out = torch.empty((num_seqs, num_heads, num_splits, head_dim),
                                  dtype=torch.float32, device=query.device)
        partial_lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32,
                                  device=query.device)
        po_strides = partial_out.stride()[:3]
        pl_strides = partial_lse.stride()[:2]
    _split_kv_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, key_cache, value_cache, block_tables, seq_lens, partial_out, partial_lse,
        float(scale), sliding_window or 0, blocks_per_split, max_blocks_per_seq,
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0),
        *po_strides, *pl_strides,
        GROUP_SIZE=group_size, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_G=max(MIN_GROUP_TILE, triton.next_power_of_2(group_size)), BLOCK_D=block_d,
        BLOCK_N=block_n, TILE_ALIGN=min(block_size, block_n),
        USE_WINDOW=sliding_window is not None, WRITE_OUTPUT=write_output,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=2,
    )
    if not write_output:
        _reduce_splits_kernel[(num_seqs, num_heads)](
            partial_out, partial_lse, out, num_splits,
            *po_strides, *pl_strides, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=block_d,
            SPLIT_CHUNK=min(SPLIT_CHUNK, triton.next_power_of_2(num_splits)),
            num_warps=4,
        )
    return out


def reference_paged_decode_attention(query: torch.Tensor, key_cache: torch.Tensor,
                                     value_cache: torch.Tensor, block_tables: torch.Tensor,
                                     seq_lens: torch.Tensor, scale: float,
                                     sliding_window: int | None = None,
                                     num_splits: int | None = None,
                                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Naive float32 attention, one sequence at a time, gathering only the keys that count (so
    garbage in unused table entries cannot leak in). Same arguments as `paged_decode_attention`
    (num_splits is ignored); returns float32 [num_seqs, num_heads, head_dim], or writes `out`."""
    num_seqs, num_heads, head_dim = query.shape
    num_kv_heads, block_size = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    result = torch.zeros(query.shape, dtype=torch.float32, device=query.device)
    for seq, length in enumerate(seq_lens.tolist()):
        first = 0 if sliding_window is None else max(0, length - sliding_window)
        positions = torch.arange(first, length, device=query.device)
        if positions.numel() == 0:
            continue
        blocks = block_tables[seq, positions // block_size].long()
        rows = positions % block_size
        keys = key_cache[blocks, :, rows].float()  # [n, num_kv_heads, head_dim]
        values = value_cache[blocks, :, rows].float()
        keys = keys.repeat_interleave(group, dim=1)  # query head h reads KV head h // group
        values = values.repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", query[seq].float(), keys) * scale
        result[seq] = torch.einsum("hn,nhd->hd", scores.softmax(dim=-1), values)
    if out is not None:
        return out.copy_(result)
    return result
