"""Fixtures for kernel tests (the shared helpers are in kernel_testing.py)."""
from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE, KERNEL_DTYPES


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(params=KERNEL_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request) -> torch.dtype:
    return request.param
