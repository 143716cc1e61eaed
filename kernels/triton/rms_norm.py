"""RMSNorm, optionally fused with the residual add before it, as runtime/layers/layernorm.py:

    without residual: out = weight * rms_norm_fp32(x).to(x.dtype)
    with residual:    s = x + residual (in x's dtype); out = weight * rms_norm_fp32(s).to(x.dtype)
                      and s is the new residual.

Roundings match the torch layer exactly: the sum is rounded to x's dtype before it is
normalized, the normalized row is rounded to x's dtype before it is scaled.

One program per row. Rows up to `_MAX_BLOCK` wide stay in registers (one read of x); wider
rows are walked in `_MAX_BLOCK` chunks twice (sum of squares, then scale), the second pass
re-reading the row from memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

_MAX_BLOCK = 16384  # widest row held in registers; read at call time (tests lower it)


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [num_tokens, hidden]
    residual_ptr,  # [num_tokens, hidden]; with HAS_RESIDUAL: read, then overwritten by x + it
    weight_ptr,  # [hidden]
    out_ptr,  # [num_tokens, hidden]
    x_stride, residual_stride, out_stride,
    hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, NUM_CHUNKS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x_row = x_ptr + row * x_stride
    residual_row = residual_ptr + row * residual_stride
    out_row = out_ptr + row * out_stride
    if NUM_CHUNKS == 1:
        mask = cols < hidden
        x = tl.load(x_row + cols, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            x = x + tl.load(residual_row + cols, mask=mask, other=0.0)  # rounded to x's dtype
            tl.store(residual_row + cols, x, mask=mask)
        x = x.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=0) / hidden + eps)
        normed = (x * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
        weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_row + cols, (weight * normed).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        sum_sq = tl.zeros([BLOCK], dtype=tl.float32)
        for chunk in range(NUM_CHUNKS):
            offs = chunk * BLOCK + cols
            mask = offs < hidden
            x = tl.load(x_row + offs, mask=mask, other=0.0)
            if HAS_RESIDUAL:
                x = x + tl.load(residual_row + offs, mask=mask, other=0.0)
                tl.store(residual_row + offs, x, mask=mask)
            x = x.to(tl.float32)
            sum_sq += x * x
        rstd = tl.rsqrt(tl.sum(sum_sq, axis=0) / hidden + eps)
        # The second pass reads back the sums the first stored: make those stores visible to
        # every thread of the program.
        tl.debug_barrier()
        for chunk in range(NUM_CHUNKS):
            offs = chunk * BLOCK + cols
            mask = offs < hidden
            if HAS_RESIDUAL:
                x = tl.load(residual_row + offs, mask=mask, other=0.0)
            else:
                x = tl.load(x_row + offs, mask=mask, other=0.0)
            normed = (x.to(tl.float32) * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
            weight = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_row + offs, (weight * normed).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None, out: torch.Tensor | None = None
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of each row of x, as `RMSNorm.forward`.

    x: [num_tokens, hidden]; weight: [hidden] (x's dtype);
    residual: [num_tokens, hidden] (x's dtype) or None; out: [num_tokens, hidden] (x's dtype) or
    None to allocate. Rows may have any stride; hidden must have unit stride.

    Without residual, returns out. With residual, returns (out, residual), where `residual` is
    the tensor passed in, overwritten in place with x + residual: the caller must not need its
    old value (the engine does not: each layer replaces its residual with the returned one).
    x may alias residual; out must not alias x or residual.
    """
    _check_inputs(x, weight, eps, residual, out)
    num_tokens, hidden = x.shape
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if num_tokens > 0:
        block = min(triton.next_power_of_2(hidden), _MAX_BLOCK)
        num_warps = 16 if block >= 8192 else 8 if block >= 2048 else 4
        has_residual = residual is not None
        residual_arg = residual if has_residual else x  # never touched without HAS_RESIDUAL
        _rms_norm_kernel[(num_tokens,)](
            x, residual_arg, weight, out,
            x.stride(0), residual_arg.stride(0), out.stride(0),
            hidden, float(eps),
            HAS_RESIDUAL=has_residual, BLOCK=block, NUM_CHUNKS=triton.cdiv(hidden, block),
            num_warps=num_warps,
        )
    return out if residual is None else (out, residual)


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, eps: float,
                  residual: torch.Tensor | None, out: torch.Tensor | None) -> None:
    if x.dim() != 2:
        raise ValueError(f"x: expected [num_tokens, hidden], got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x: expected a floating-point dtype, got {x.dtype}")
    hidden = x.shape[1]
    if weight.shape != (hidden,):
        raise ValueError(f"weight: expected shape ({hidden},), got {tuple(weight.shape)}")
    if not eps >= 0:  # also rejects NaN
        raise ValueError(f"eps: expected a non-negative number, got {eps}")
    tensors = [("x", x), ("weight", weight)]
    for name, tensor in (("residual", residual), ("out", out)):
        if tensor is None:
            continue
        if tensor.shape != x.shape:
            raise ValueError(f"{name}: shape {tuple(tensor.shape)} differs from x's "
                             f"{tuple(x.shape)}")
        tensors.append((name, tensor))
    for name, tensor in tensors:
        if tensor.dtype != x.dtype:
            raise ValueError(f"{name}: dtype {tensor.dtype} differs from x's {x.dtype}")
        if tensor.device != x.device:
            raise ValueError(f"{name}: on {tensor.device}, x on {x.device}")
        if hidden > 1 and tensor.stride(-1) != 1:
            raise ValueError(f"{name}: hidden must have unit stride, got strides "
                             f"{tensor.stride()}")


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                       residual: torch.Tensor | None = None
                       ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`RMSNorm.forward` (runtime/layers/layernorm.py) as a function, out of place.

    x, residual: [num_tokens, hidden]; weight: [hidden].
    """
    if residual is not None:
        x = x + residual
        residual = x
    normed = F.rms_norm(x.float(), (x.shape[-1],), None, eps)
    out = weight * normed.to(x.dtype)
    return out if residual is None else (out, residual)
