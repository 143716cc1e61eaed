"""Matrix products for half-precision models on CPUs without native bf16/fp16 GEMM.

Measured on a 2-core AVX2 machine (no AVX-512 BF16, no AMX), a [576 x 3072] weight:
- one row (decode of one sequence) is memory-bound, and bf16 halves the bytes: bf16 0.20 ms,
  fp32 0.50 ms when the weights stream from memory;
- from about 4 rows on, the bf16 GEMM costs about one row's time per row (64 rows: 11.7 ms),
  while converting the weight to fp32 into a reused buffer and multiplying in fp32 takes 2.1 ms.
So on the torch kernels weights stay in half precision, single rows use them directly, and
batches of rows multiply in fp32 through one reused conversion buffer (reused, because a fresh
7 MB allocation costs more in page faults than the product itself). CPUs with native bf16 GEMM
take the plain path.

With the C kernels (kernel backend "cpu") every product goes to kernels/cpu/linear.py instead,
in every dtype and at every size: up to 11 rows it streams the weights at memory bandwidth
(torch's single-row product reached about half of it here), from 12 rows on it is a
register-blocked GEMM that widens the weights as it packs them (csrc/gemm.c), so no conversion
pass and no fp32 copy of the weights. Over SmolLM2's 120 matrices in bf16 (milliseconds,
medians of 5, alternating runs of one session, against the fp32 path above):

    rows        8     16    32    64    128   256
    C kernels   31    51    76    125   238   460
    fp32 path   60    73    95    149   222   421

(one step of 64 decodes: 1.2x faster; 256-row prefill chunks: the same within noise). Alone on
one warm matrix the GEMM reaches 140-180 GFLOP/s of the machine's 195 FMA peak, as torch's fp32
GEMM does.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

MIN_UPCAST_ROWS = 4


@functools.cache
def cpu_has_native_half_gemm() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown: trust the library
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", "avx512_fp16"))


def should_upcast(x: torch.Tensor) -> bool:
    """True when x's product is faster in fp32 than in its own half precision."""
    return (x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu"
            and x.shape[0] >= MIN_UPCAST_ROWS and not cpu_has_native_half_gemm())


class _ConversionBuffer:
    """One fp32 buffer, grown to the largest weight converted so far; the engine runs one step
    at a time, so one buffer serves every layer."""

    def __init__(self) -> None:
        self._buffer = torch.empty(0)

    def convert(self, weight: torch.Tensor) -> torch.Tensor:
        if self._buffer.numel() < weight.numel():
            # A normal tensor even when first made inside inference mode (the engine's): an
            # inference tensor could not be written outside it.
            with torch.inference_mode(False):
                self._buffer = torch.empty(weight.numel(), dtype=torch.float32)
        return self._buffer[:weight.numel()].view(weight.shape).copy_(weight)


_conversion = _ConversionBuffer()


def uses_cpu_kernel(x: torch.Tensor, kernels: str) -> bool:
    return kernels == "cpu" and x.dim() == 2


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           kernels: str = "torch") -> torch.Tensor:
    """F.linear: by the C kernels when `kernels` is "cpu", else in fp32 when
    `should_upcast(x)`; the result keeps x's dtype."""
    if uses_cpu_kernel(x, kernels):
        from infernetes.kernels.cpu.linear import linear as linear_cpu
        return linear_cpu(x if x.stride(-1) == 1 else x.contiguous(), weight, bias)
    if not should_upcast(x):
        return F.linear(x, weight, bias)
    out = F.linear(x.float(), _conversion.convert(weight),
                   None if bias is None else bias.float())
    return out.to(x.dtype)
