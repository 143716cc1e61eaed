"""What every CPU kernel launcher shares: dtype codes, argument checks, the thread count."""
from __future__ import annotations

import torch

from infernetes.kernels.cpu.library import DTYPE_CODES


def dtype_code(name: str, tensor: torch.Tensor) -> int:
    code = DTYPE_CODES.get(tensor.dtype)
    if code is None:
        raise ValueError(f"{name}: the CPU kernels take float32, bfloat16 or float16, got "
                         f"{tensor.dtype}")
    if tensor.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got one on {tensor.device}")
    return code


def check_same_dtype(reference: str, tensor: torch.Tensor, **others: torch.Tensor | None
                     ) -> None:
    for name, other in others.items():
        if other is not None and (other.dtype != tensor.dtype or other.device != tensor.device):
            raise ValueError(f"{name}: {other.dtype} on {other.device} differs from "
                             f"{reference}'s {tensor.dtype} on {tensor.device}")


def check_rows(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    """tensor has `shape` and unit stride along its last dimension (rows may be strided)."""
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(tensor.shape)}")
    if shape[-1] > 1 and tensor.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must have unit stride, got strides "
                         f"{tensor.stride()}")


def check_heads_contiguous(name: str, tensor: torch.Tensor) -> None:
    """tensor: [tokens, heads, head_dim] with heads and dims contiguous (tokens may be strided)."""
    if tensor.stride(2) != 1 or tensor.stride(1) != tensor.shape[2]:
        raise ValueError(f"{name}: heads and dims must be contiguous, got strides "
                         f"{tensor.stride()}")


def check_int64(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    """tensor is a contiguous int64 tensor of `shape` (indices the C code reads directly)."""
    if tuple(tensor.shape) != shape or tensor.dtype != torch.int64 \
            or not tensor.is_contiguous():
        raise ValueError(f"{name}: expected contiguous int64 {shape}, got {tensor.dtype} "
                         f"{tuple(tensor.shape)}")


def num_threads() -> int:
    """torch's intra-op thread count: the kernels run on the same OpenMP pool."""
    return torch.get_num_threads()
