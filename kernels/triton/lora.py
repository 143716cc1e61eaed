"""Batched multi-adapter LoRA (shrink, expand) in Triton: the semantics and weight layout of
kernels/lora.py, whose torch functions are the reference.

One kernel per op serves both regimes; the launcher picks the tile height BLOCK_M from
num_tokens alone:
- per token (BLOCK_M = 1; small decode batches, as Punica's BGMV): a program owns one token, a
  broadcast product and a sum over K, no tensor-core tile with 15 rows wasted;
- grouped (BLOCK_M = 16 or 64, as SGMV): a program owns a tile of consecutive tokens and walks
  the distinct slots in it: for each slot, one `tl.dot` pass over the tile's rows of that slot
  (the other rows masked off, so never loaded), until every row is done. A tile of one
  prefill chunk is one pass that reads the adapter's weights once for BLOCK_M tokens.

Segment contract: none for correctness. Tokens may use slots in any order; the kernels group
them per tile on the device, so unlike SGMV no segment metadata (segment starts and slots) is
computed on the host, copied or trusted, and the grid depends on shapes only. For speed,
tokens sharing an adapter should be contiguous (the engine lays out decode tokens first, then
each prefill chunk contiguously): the passes per tile are the distinct slots in it. Slots
outside [-1, num_slots) count as -1 here (the host never reads token_slots; the torch path
raises for them).

Shrink, grid (token tiles, rank tiles, split_k): rank is small, so a batch with few tiles is
also split along in_features; the float32 partial sums [split_k, num_tokens, max_rank] are
added by one `torch.sum` (deterministic, no atomics). split_k comes from shapes and the SM count.
Expand, grid (token tiles, tiles of out_features): y (float32) times B (cast to float32; tf32
tensor cores for 16-bit models, IEEE for float32), added to the base rows in float32 and
rounded once to base's dtype; rows with slot -1 are neither read nor written.

No launcher reads a device value on the host or syncs: each call can be captured in a CUDA
graph (token_slots then a static buffer the engine fills each step, padding tokens given -1).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from infernetes.kernels.lora import check_apply_args, check_expand_args, check_shrink_args

# At most this many tokens: one program per token (BGMV); above, tiles of tokens (SGMV).
PER_TOKEN_MAX_TOKENS = 16
# Grouped tile height: 16 rows (the least `tl.dot` takes) up to this many tokens, 64 above.
SMALL_TILE_MAX_TOKENS = 256
# Shrink split over in_features: about this many programs per SM, no split shorter than
# MIN_K_PER_SPLIT columns, at most MAX_SPLIT_K splits.
TARGET_PROGRAMS_PER_SM = 2
MIN_K_PER_SPLIT = 256
MAX_SPLIT_K = 32
MAX_BLOCK_R = 64  # ranks per tile; a larger max_rank takes several rank tiles (or steps)
BLOCK_N = 64  # expand: columns of out_features per program
# 8 warps, 2 stages: no register spills for bf16/fp16 at ranks <= 64 (ptxas -v, sm_90);
# 4 warps spill at BLOCK_M = 64.
NUM_WARPS, NUM_STAGES = 8, 2


@triton.jit
def _tile_product(a, b, USE_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """a: [BLOCK_M, K] @ b: [K, N] -> [BLOCK_M, N] float32. USE_DOT: tensor cores (BLOCK_M >=
    16); else (BLOCK_M = 1) a broadcast product summed over K in float32."""
    if USE_DOT:
        return tl.dot(a, b, input_precision=DOT_PRECISION, out_dtype=tl.float32)
    else:
        return tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)


@triton.jit
def _shrink_kernel(
    x_ptr,  # [num_tokens, in_features]
    lora_a_ptr,  # [num_slots, max_rank, in_features]
    token_slots_ptr,  # [num_tokens] int32
    out_ptr,  # [split_k, num_tokens, max_rank] float32 (split_k 1: the output, split stride 0)
    num_tokens, in_features, max_rank, num_slots, k_per_split,
    stride_x_token, stride_a_slot, stride_a_rank, stride_out_split, stride_out_token,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ranks = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    split = tl.program_id(2)
    row_mask = rows < num_tokens
    r_mask = ranks < max_rank
    slots = tl.load(token_slots_ptr + rows, mask=row_mask, other=-1)
    pending = row_mask & (slots >= 0) & (slots < num_slots)  # rows with an adapter, not done
    # Pointer tiles are formed where used, not kept live across the loops (registers).
    out_rows = out_ptr + split * stride_out_split + rows.to(tl.int64) * stride_out_token
    tl.store(out_rows[:, None] + ranks[None, :], tl.zeros([BLOCK_M, BLOCK_R], tl.float32),
             mask=(row_mask & ~pending)[:, None] & r_mask[None, :])
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, in_features)
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows.to(tl.int64) * stride_x_token
    # One pass per distinct slot in the tile, smallest first; each row is in exactly one pass.
    while tl.max(pending.to(tl.int32), axis=0) > 0:
        slot = tl.min(tl.where(pending, slots, num_slots), axis=0)
        group = pending & (slots == slot)
        a_slot = lora_a_ptr + slot.to(tl.int64) * stride_a_slot
        acc = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
        for k in range(k_lo, k_hi, BLOCK_K):
            cols = k + offs_k
            k_mask = cols < k_hi
            x = tl.load(x_rows[:, None] + cols[None, :], mask=group[:, None] & k_mask[None, :],
                        other=0.0)  # [BLOCK_M, BLOCK_K]
            a = tl.load(a_slot + ranks[None, :] * stride_a_rank + cols[:, None],
                        mask=k_mask[:, None] & r_mask[None, :], other=0.0)  # [BLOCK_K, BLOCK_R]
            acc += _tile_product(x, a, USE_DOT, DOT_PRECISION)
        tl.store(out_rows[:, None] + ranks[None, :], acc, mask=group[:, None] & r_mask[None, :])
        pending = pending & ~group


@triton.jit
def _expand_kernel(
    y_ptr,  # [num_tokens, max_rank] float32
    lora_b_ptr,  # [num_slots, out_features, max_rank]
    token_slots_ptr,  # [num_tokens] int32
    base_ptr,  # [num_tokens, out_features]: base's columns [column_offset, + out_features)
    num_tokens, out_features, max_rank, num_slots,
    stride_y_token, stride_b_slot, stride_b_out, stride_base_token,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    USE_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < num_tokens
    n_mask = cols < out_features
    slots = tl.load(token_slots_ptr + rows, mask=row_mask, other=-1)
    pending = row_mask & (slots >= 0) & (slots < num_slots)
    offs_r = tl.arange(0, BLOCK_R)
    y_rows = y_ptr + rows.to(tl.int64) * stride_y_token
    base_rows = base_ptr + rows.to(tl.int64) * stride_base_token
    while tl.max(pending.to(tl.int32), axis=0) > 0:
        slot = tl.min(tl.where(pending, slots, num_slots), axis=0)
        group = pending & (slots == slot)
        b_slot = lora_b_ptr + slot.to(tl.int64) * stride_b_slot
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for r in range(0, max_rank, BLOCK_R):
            ranks = r + offs_r
            r_mask = ranks < max_rank
            y = tl.load(y_rows[:, None] + ranks[None, :], mask=group[:, None] & r_mask[None, :],
                        other=0.0)  # [BLOCK_M, BLOCK_R]
            b = tl.load(b_slot + cols[None, :] * stride_b_out + ranks[:, None],
                        mask=r_mask[:, None] & n_mask[None, :], other=0.0)  # [BLOCK_R, BLOCK_N]
            acc += _tile_product(y, b.to(tl.float32), USE_DOT, DOT_PRECISION)
        mask = group[:, None] & n_mask[None, :]
        old = tl.load(base_rows[:, None] + cols[None, :], mask=mask, other=0.0)
        tl.store(base_rows[:, None] + cols[None, :],
                 (old.to(tl.float32) + acc).to(base_ptr.dtype.element_ty), mask=mask)
        pending = pending & ~group


# -- launchers -------------------------------------------------------------------------------

def lora_shrink(x: torch.Tensor, lora_a: torch.Tensor, token_slots: torch.Tensor,
                out: torch.Tensor | None = None, *, per_token: bool | None = None) -> torch.Tensor:
    """x: [num_tokens, in_features] (fp16, bf16 or fp32; unit stride along in_features);
    lora_a: [num_slots, max_rank, in_features] in x's dtype (unit stride along in_features);
    token_slots: [num_tokens] int32, contiguous; out: [num_tokens, max_rank] float32 (unit stride
    along max_rank) or None to allocate. Returns out = x @ lora_a[slot].T per token, 0 where the
    slot is -1. per_token: force the per-token (True) or grouped (False) kernel; None picks by
    num_tokens."""
    check_shrink_args(x, lora_a, token_slots, out)
    _check_layout(x=x, lora_a=lora_a, token_slots=token_slots, out=out)
    return _shrink(x, lora_a, token_slots, out, per_token)


def lora_expand(y: torch.Tensor, lora_b: torch.Tensor, token_slots: torch.Tensor,
                base: torch.Tensor, column_offset: int = 0, *,
                per_token: bool | None = None) -> None:
    """y: [num_tokens, max_rank] float32 (unit stride along max_rank); lora_b: [num_slots,
    out_features, max_rank] in base's dtype (unit stride along max_rank); base:
    [num_tokens, total_out] (fp16, bf16 or fp32; unit stride along total_out), updated in place:
    base[:, column_offset:column_offset + out_features] += y @ lora_b[slot].T for rows whose slot
    is not -1 (float32 sum, rounded once). per_token as in lora_shrink."""
    check_expand_args(y, lora_b, token_slots, base, column_offset)
    _check_layout(y=y, lora_b=lora_b, token_slots=token_slots, base=base)
    _expand(y, lora_b, token_slots, base, column_offset, per_token)


def apply_lora(x: torch.Tensor, base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
               token_slots: torch.Tensor, column_offset: int = 0, *,
               per_token: bool | None = None) -> None:
    """lora_shrink then lora_expand into `base` (in place); every argument is checked before
    the first launch."""
    check_apply_args(x, base, lora_a, lora_b, token_slots, column_offset)
    _check_layout(x=x, lora_a=lora_a, token_slots=token_slots, lora_b=lora_b, base=base)
    y = _shrink(x, lora_a, token_slots, None, per_token)
    _expand(y, lora_b, token_slots, base, column_offset, per_token)


def _shrink(x: torch.Tensor, lora_a: torch.Tensor, token_slots: torch.Tensor,
            out: torch.Tensor | None, per_token: bool | None) -> torch.Tensor:
    num_tokens, in_features = x.shape
    num_slots, max_rank, _ = lora_a.shape
    if out is None:
        out = torch.empty((num_tokens, max_rank), dtype=torch.float32, device=x.device)
    if num_tokens == 0:
        return out
    block_m = _tile_rows(num_tokens, per_token)
    block_r = _rank_tile(max_rank)
    block_k = 64 if block_m > 1 else max(32, min(256, 4096 // block_r))
    tiles = (triton.cdiv(num_tokens, block_m), triton.cdiv(max_rank, block_r))
    split_k, k_per_split = choose_split_k(tiles[0] * tiles[1], in_features, block_k,
                                          _num_sms(x.device))
    if split_k == 1:
        partial, split_stride = out, 0
    else:
        partial = torch.empty((split_k, num_tokens, max_rank), dtype=torch.float32,
                              device=x.device)
        split_stride = partial.stride(0)
    _shrink_kernel[(*tiles, split_k)](
        x, lora_a, token_slots, partial,
        num_tokens, in_features, max_rank, num_slots, k_per_split,
        x.stride(0), lora_a.stride(0), lora_a.stride(1), split_stride, partial.stride(-2),
        BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=block_k, USE_DOT=block_m > 1,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    if split_k > 1:
        torch.sum(partial, dim=0, out=out)
    return out


def _expand(y: torch.Tensor, lora_b: torch.Tensor, token_slots: torch.Tensor,
            base: torch.Tensor, column_offset: int, per_token: bool | None) -> None:
    num_tokens = base.shape[0]
    num_slots, out_features, max_rank = lora_b.shape
    if num_tokens == 0 or out_features == 0:
        return
    block_m = _tile_rows(num_tokens, per_token)
    target = base.narrow(1, column_offset, out_features)
    grid = (triton.cdiv(num_tokens, block_m), triton.cdiv(out_features, BLOCK_N))
    _expand_kernel[grid](
        y, lora_b, token_slots, target,
        num_tokens, out_features, max_rank, num_slots,
        y.stride(0), lora_b.stride(0), lora_b.stride(1), base.stride(0),
        BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_R=_rank_tile(max_rank), USE_DOT=block_m > 1,
        DOT_PRECISION="ieee" if base.dtype == torch.float32 else "tf32",
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )


# -- choices from shapes ---------------------------------------------------------------------

def choose_split_k(num_programs: int, in_features: int, block_k: int,
                   num_sms: int) -> tuple[int, int]:
    """(split_k, k_per_split) for the shrink: enough splits of in_features for about
    TARGET_PROGRAMS_PER_SM programs per SM, none shorter than MIN_K_PER_SPLIT, at most
    MAX_SPLIT_K; k_per_split a multiple of block_k, and no split left empty."""
    wanted = -(-TARGET_PROGRAMS_PER_SM * num_sms // max(num_programs, 1))
    split_k = max(1, min(wanted, in_features // MIN_K_PER_SPLIT, MAX_SPLIT_K))
    k_per_split = max(1, triton.cdiv(triton.cdiv(in_features, split_k), block_k)) * block_k
    return max(1, triton.cdiv(in_features, k_per_split)), k_per_split


def _tile_rows(num_tokens: int, per_token: bool | None) -> int:
    if per_token is None:
        per_token = num_tokens <= PER_TOKEN_MAX_TOKENS
    if per_token:
        return 1
    return 16 if num_tokens <= SMALL_TILE_MAX_TOKENS else 64


def _rank_tile(max_rank: int) -> int:
    return max(16, min(triton.next_power_of_2(max_rank), MAX_BLOCK_R))  # `tl.dot`: K, N >= 16


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    return _sm_count(device.index or 0) if device.type == "cuda" else 1


def _check_layout(**tensors: torch.Tensor | None) -> None:
    """Unit stride along the last dimension (token_slots: contiguous), and a device the kernels
    run on; ValueError naming the argument."""
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.shape[-1] > 1 and tensor.stride(-1) != 1:
            raise ValueError(f"{name}: the last dimension must have unit stride, got strides "
                             f"{tensor.stride()}")
        if tensor.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"{name}: on {tensor.device}; the kernels need a CUDA device (or "
                             "TRITON_INTERPRET=1 set before triton is imported)")
