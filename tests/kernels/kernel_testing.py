"""What kernel tests share: the device, the dtypes and tolerances, poisoned outputs.

On CPU, kernels run under Triton's interpreter: `TRITON_INTERPRET` is read when a kernel is
decorated, so it is set here, and this module is imported (by conftest.py and by every kernel
test module) before any kernel module. The interpreter computes bfloat16 wrongly: on CPU the
dtypes are float32 and float16; on a GPU, bfloat16, float16 and float32.
"""
from __future__ import annotations

import os

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
KERNEL_DTYPES = [torch.float16, torch.bfloat16, torch.float32] if ON_GPU \
    else [torch.float32, torch.float16]
# (atol, rtol) per dtype, for outputs of magnitude ~1.
TOLERANCE = {torch.float32: (2e-5, 1e-5), torch.float16: (2e-3, 2e-3),
             torch.bfloat16: (1.6e-2, 1.6e-2)}


def poisoned(shape, dtype: torch.dtype, device: torch.device = DEVICE) -> torch.Tensor:
    """An output buffer full of NaN: an element the kernel forgets to write fails the test."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCE[dtype]
    assert not actual.isnan().any(), "unwritten (NaN) elements"
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)
