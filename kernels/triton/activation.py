"""SiLU-and-multiply of a fused gate/up projection: out = silu(x[:, :d]) * x[:, d:].

Computed in float32 and rounded once to x's dtype (the torch layer, runtime/layers/activation.py,
rounds twice in x's dtype: after the SiLU and after the product). One program per (token, tile
of d).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from infernetes.runtime.layers.activation import silu_and_mul as _torch_silu_and_mul

_BLOCK = 1024  # columns of d per program


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [num_tokens, 2 * d]: gate | up
    out_ptr,  # [num_tokens, d]
    x_stride, out_stride, d,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    x_row = x_ptr + token * x_stride
    gate = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_row + d + cols, mask=mask, other=0.0).to(tl.float32)
    # sigmoid from exp(-|gate|) <= 1: no overflow to inf for very negative gates.
    e = tl.exp(-tl.abs(gate))
    sigmoid = tl.where(gate >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    out = gate * sigmoid * up
    tl.store(out_ptr + token * out_stride + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [num_tokens, 2 * d] (rows of any stride, unit stride along them);
    out: [num_tokens, d] in x's dtype (unit stride along rows), or None to allocate.
    Returns out. out must not overlap x.
    """
    _check_inputs(x, out)
    num_tokens, d = x.shape[0], x.shape[1] // 2
    if out is None:
        out = torch.empty((num_tokens, d), dtype=x.dtype, device=x.device)
    if num_tokens > 0 and d > 0:
        block = min(triton.next_power_of_2(d), _BLOCK)
        grid = (num_tokens, triton.cdiv(d, block))
        _silu_and_mul_kernel[grid](x, out, x.stride(0), out.stride(0), d, BLOCK=block)
    return out


def _check_inputs(x: torch.Tensor, out: torch.Tensor | None) -> None:
    if x.dim() != 2 or x.shape[1] % 2:
        raise ValueError(f"x: expected [num_tokens, 2 * d], got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x: expected a floating-point dtype, got {x.dtype}")
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"x: columns must have unit stride, got strides {x.stride()}")
    if out is None:
        return
    expected = (x.shape[0], x.shape[1] // 2)
    if out.shape != expected:
        raise ValueError(f"out: expected shape {expected}, got {tuple(out.shape)}")
    if out.dtype != x.dtype:
        raise ValueError(f"out: dtype {out.dtype} differs from x's {x.dtype}")
    if out.device != x.device:
        raise ValueError(f"out: on {out.device}, x on {x.device}")
    if out.shape[1] > 1 and out.stride(1) != 1:
        raise ValueError(f"out: columns must have unit stride, got strides {out.stride()}")


def reference_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """runtime/layers/activation.py's `silu_and_mul` in float32, rounded to x's dtype.
    x: [num_tokens, 2 * d] -> [num_tokens, d]."""
    return _torch_silu_and_mul(x.float()).to(x.dtype)
