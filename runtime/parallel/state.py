"""The tensor-parallel group this process belongs to.

One process is a group of one: rank 0 of size 1, and the collectives are identities. A worker
of a tensor-parallel engine (runtime/parallel/worker.py) joins its group with
`init_tensor_parallel` before the model is built; the parallel layers ask only
`get_tp_group()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True, slots=True)
class TensorParallelGroup:
    rank: int = 0
    size: int = 1

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, in place."""
        if self.size == 1:
            return tensor
        torch.distributed.all_reduce(tensor)
        return tensor

    def gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Every rank's tensor concatenated along the last dimension, on rank 0 only (None on
        the others): the logits, sampled by rank 0 alone."""
        if self.size == 1:
            return tensor
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.size)] if self.is_first else None
        torch.distributed.gather(tensor, parts, dst=0)
        return torch.cat(parts, dim=-1) if self.is_first else None


_group = TensorParallelGroup()


def get_tp_group() -> TensorParallelGroup:
    return _group


def set_tp_group(group: TensorParallelGroup) -> None:
    global _group
    _group = group


def init_tensor_parallel(rank: int, size: int, store_port: int, backend: str,
                         timeout_seconds: float = 600.0) -> TensorParallelGroup:
    """Join the group through the engine's TCP store on loopback (the engine bound it to a
    free port, so no address or port is fixed) with `backend`: nccl on GPUs, gloo on CPU."""
    store = torch.distributed.TCPStore("127.0.0.1", store_port, is_master=False,
                                       timeout=timedelta(seconds=timeout_seconds))
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=size,
                                         timeout=timedelta(seconds=timeout_seconds))
    group = TensorParallelGroup(rank, size)
    set_tp_group(group)
    return group
