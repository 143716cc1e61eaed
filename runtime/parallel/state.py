"""The tensor-parallel group this process belongs to.

One process is a group of one: rank 0 of size 1, and the collectives are identities. The
parallel layers ask only these functions, so multi-process groups slot in here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class TensorParallelGroup:
    rank: int = 0
    size: int = 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        torch.distributed.all_reduce(tensor)
        return tensor


_group = TensorParallelGroup()


def get_tp_group() -> TensorParallelGroup:
    return _group


def set_tp_group(group: TensorParallelGroup) -> None:
    global _group
    _group = group
