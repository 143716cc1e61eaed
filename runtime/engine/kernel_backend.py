"""Which kernels run the model: "triton" (CUDA, or Triton's interpreter in tests), "cpu" (our C
kernels for decoding on CPUs: kernels/cpu) or "torch" (plain torch ops, the reference).

`--kernel-backend auto` picks Triton on CUDA and, on CPU, the C kernels when they build here
and use SIMD (AVX2 + FMA + F16C); else torch, with a warning saying why.
"""
from __future__ import annotations

import logging

import torch

from infernetes.runtime.config import ConfigError

logger = logging.getLogger(__name__)


def resolve_kernel_backend(requested: str, device: torch.device) -> str:
    """-> "torch", "triton" or "cpu". ConfigError, naming the flag, when the backend asked
    for cannot run here."""
    if requested == "triton" or (requested == "auto" and device.type == "cuda"):
        _check_triton()
        return "triton"
    if requested == "torch":
        return "torch"
    if device.type != "cpu":
        raise ConfigError(f"--kernel-backend cpu runs on CPU devices, not {device.type}")
    from infernetes.kernels.cpu.library import CpuKernelsUnavailable, load, simd_width
    from infernetes.runtime.gguf_convert import cache_root
    try:
        load(cache_root() / "kernels")
    except CpuKernelsUnavailable as error:
        if requested == "cpu":
            raise ConfigError(f"--kernel-backend cpu: {error}") from None
        logger.warning("CPU kernels unavailable, using torch's: %s", error)
        return "torch"
    if requested == "auto" and simd_width() < 8:
        logger.warning("CPU kernels built without AVX2/FMA/F16C here; using torch's")
        return "torch"
    return "cpu"


def _check_triton() -> None:
    try:
        import triton  # noqa: F401
    except ImportError:
        raise ConfigError("the Triton kernels need the `triton` package (CUDA builds of "
                          "torch include it); on CPU use the torch kernels") from None
