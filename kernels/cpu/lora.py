"""Batched multi-adapter LoRA for one projection, all its parts in one call (csrc/lora.c): the
cpu backend's apply_lora, with kernels/lora.py's layout and semantics (that module's torch code
is the reference). A merged projection (q, k, v of qkv; gate, up) passes every part at once;
the tokens are grouped by slot in C and each slot's chunk of tokens multiplies through the
packed GEMM, instead of torch's few small matmuls per slot and part.
"""
from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch

from infernetes.kernels.cpu.launch import dtype_code, num_threads
from infernetes.kernels.cpu.library import library
from infernetes.kernels.lora import check_apply_args, check_slot_range

_P, _I64 = ctypes.c_void_p, ctypes.c_int64

# (lora_a [num_slots, rank, in], lora_b [num_slots, out, rank], column_offset) of one part.
LoRAPart = tuple[torch.Tensor, torch.Tensor, int]


class LoRATarget(ctypes.Structure):
    """Mirrors csrc/kernels.h's struct ifn_lora_target."""
    _fields_ = [("a", _P), ("b", _P), ("in_features", _I64), ("out_features", _I64),
                ("column_offset", _I64)]


def apply_lora_parts(x: torch.Tensor, base: torch.Tensor, parts: Sequence[LoRAPart],
                     token_slots: torch.Tensor) -> None:
    """For every part, base[:, offset:offset + out] += (x @ lora_a[slot].T @ lora_b[slot].T)
    per token whose slot is not -1, as kernels/lora.py's apply_lora (shrink in fp32, the update
    rounded to base's dtype, then the sum). x: [num_tokens, in] with unit stride along in;
    base: [num_tokens, total_out] contiguous, updated in place; slot weights contiguous, one
    rank for all parts. ValueError naming the argument at fault."""
    code = dtype_code("x", x)
    rank = None
    for lora_a, lora_b, column_offset in parts:
        check_apply_args(x, base, lora_a, lora_b, token_slots, column_offset)
        if not (lora_a.is_contiguous() and lora_b.is_contiguous()):
            raise ValueError("lora_a, lora_b: expected contiguous slot weights")
        if rank is not None and lora_a.shape[1] != rank:
            raise ValueError(f"lora_a: every part must have one rank, got {lora_a.shape[1]} "
                             f"and {rank}")
        rank = lora_a.shape[1]
    if base.dtype != x.dtype:
        raise ValueError(f"base: {base.dtype} differs from x's {x.dtype}")
    if not base.is_contiguous() or (x.shape[1] > 1 and x.stride(1) != 1):
        raise ValueError(f"x, base: expected unit stride along the features, got strides "
                         f"{x.stride()} and {base.stride()} (base contiguous)")
    if not token_slots.is_contiguous():
        raise ValueError("token_slots: expected a contiguous tensor")
    num_tokens = x.shape[0]
    if not parts or num_tokens == 0:
        return
    check_slot_range(int(token_slots.min()), int(token_slots.max()), parts[0][0].shape[0])
    targets = (LoRATarget * len(parts))(*(
        LoRATarget(a.data_ptr(), b.data_ptr(), a.shape[2], b.shape[1], offset)
        for a, b, offset in parts))
    status = library().ifn_lora_apply(x.data_ptr(), x.stride(0), base.data_ptr(),
                                      base.stride(0), ctypes.addressof(targets), len(parts),
                                      token_slots.data_ptr(), num_tokens, rank, code,
                                      num_threads())
    if status != 0:
        raise MemoryError("apply_lora_parts: out of memory for the grouped tokens")
