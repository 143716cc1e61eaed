"""y = x @ weight.T (+ bias) for a few rows of x, bound by memory bandwidth (csrc/linear.c).

The torch reference is `torch.nn.functional.linear`; this kernel accumulates in fp32 and
rounds once, as torch's half-precision products do, in a different order.
"""
from __future__ import annotations

import torch

from infernetes.kernels.cpu.launch import check_rows, check_same_dtype, dtype_code, num_threads
from infernetes.kernels.cpu.library import DTYPE_CODES, library


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x: [m, k] (unit stride along k); weight: [n, k] contiguous; bias: [n] or None; one
    dtype. Returns [m, n] in x's dtype, or in float32 when out_dtype says so (the same values:
    the logits, which the sampler reads in float32, without a conversion pass)."""
    code = dtype_code("x", x)
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"linear: expected x [m, k] and weight [n, k], got shapes "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    m, k = x.shape
    n = weight.shape[0]
    check_same_dtype("x", x, weight=weight, bias=bias)
    check_rows("x", x, (m, k))
    if weight.shape[1] != k or not weight.is_contiguous():
        raise ValueError(f"weight: expected a contiguous [{n}, {k}] matrix, got shape "
                         f"{tuple(weight.shape)} with strides {weight.stride()}")
    if bias is not None and (bias.shape != (n,) or not bias.is_contiguous()):
        raise ValueError(f"bias: expected a contiguous ({n},) vector, got {tuple(bias.shape)}")
    out_dtype = out_dtype or x.dtype
    if out_dtype not in (x.dtype, torch.float32):
        raise ValueError(f"out_dtype: x's {x.dtype} or float32, not {out_dtype}")
    out = torch.empty((m, n), dtype=out_dtype)
    if m and n:
        status = library().ifn_linear(x.data_ptr(), x.stride(0), weight.data_ptr(),
                                      None if bias is None else bias.data_ptr(),
                                      out.data_ptr(), n, DTYPE_CODES[out_dtype], m, n, k, code,
                                      num_threads())
        if status != 0:
            raise MemoryError("linear: out of memory for the widened rows of x")
    return out
