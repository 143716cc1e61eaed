"""Linear layers that know how they are split across tensor-parallel ranks.

Each parameter carries a `weight_loader(param, loaded_weight, shard_id=None)` that copies this
rank's slice of a checkpoint tensor into place, so the model loader never needs to know about
packing (q/k/v into one matrix, gate/up into one) or sharding.
"""
from __future__ import annotations

import torch
from torch import nn

from infernetes.runtime.layers.cpu_matmul import linear
from infernetes.runtime.loader import as_tensor
from infernetes.runtime.parallel.sharding import divide, kv_heads_per_rank, kv_shard_index
from infernetes.runtime.parallel.state import get_tp_group


def _param(*shape: int, dtype: torch.dtype, loader) -> nn.Parameter:
    param = nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)
    param.weight_loader = loader
    return param


class LinearBase(nn.Module):
    def __init__(self, input_size: int, output_size: int, bias: bool, dtype: torch.dtype):
        super().__init__()
        self.tp = get_tp_group()
        self.input_size, self.output_size = input_size, output_size
        self.weight = _param(output_size, input_size, dtype=dtype, loader=self.weight_loader)
        self.bias = _param(output_size, dtype=dtype, loader=self.weight_loader) if bias else None
        self.lora = None  # a LoRALayerState when adapters are enabled (runtime/lora/manager.py)
        self.kernels = "torch"  # set by the model runner (kernel_backend.py)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: int | str | None = None) -> None:
        _copy(param.data, loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear(x, self.weight, self.bias, self.kernels)
        if self.lora is not None:
            self.lora.apply(x, out)
        return out


class ColumnParallelLinear(LinearBase):
    """Y = XA with A split by columns (output features): each rank owns a slice of Y."""

    def __init__(self, input_size: int, output_size: int, bias: bool, dtype: torch.dtype):
        tp_size = get_tp_group().size
        super().__init__(input_size, divide(output_size, tp_size, "output size"), bias, dtype)

    def weight_loader(self, param, loaded, shard_id=None):
        size = param.shape[0]
        _copy(param.data, loaded.narrow(0, self.tp.rank * size, size))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel matrices stacked into one (gate and up of a gated MLP)."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool, dtype: torch.dtype):
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias, dtype)

    def weight_loader(self, param, loaded, shard_id=None):
        tp = self.tp
        offset = sum(self.output_sizes[:shard_id]) // tp.size
        size = self.output_sizes[shard_id] // tp.size
        _copy(param.data.narrow(0, offset, size), loaded.narrow(0, tp.rank * size, size))


class QKVParallelLinear(ColumnParallelLinear):
    """Query, key and value projections in one matrix, split by heads across ranks."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool, dtype: torch.dtype):
        tp_size = get_tp_group().size
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, tp_size, "number of attention heads")
        # With more ranks than KV heads, each KV head is replicated on several ranks.
        self.num_kv_heads = kv_heads_per_rank(num_kv_heads, tp_size)
        self.kv_source_rank = kv_shard_index(num_kv_heads, tp_size, get_tp_group().rank)
        output_size = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp_size
        super().__init__(hidden_size, output_size, bias, dtype)

    def weight_loader(self, param, loaded, shard_id=None):
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        rank = self.tp.rank
        if shard_id == "q":
            offset, size, source_rank = 0, q_size, rank
        elif shard_id == "k":
            offset, size, source_rank = q_size, kv_size, self.kv_source_rank
        elif shard_id == "v":
            offset, size, source_rank = q_size + kv_size, kv_size, self.kv_source_rank
        else:
            raise ValueError(f"QKV shard id must be q, k or v, got {shard_id!r}")
        _copy(param.data.narrow(0, offset, size), loaded.narrow(0, source_rank * size, size))


class RowParallelLinear(LinearBase):
    """Y = XA with A split by rows (input features): partial sums are all-reduced."""

    def __init__(self, input_size: int, output_size: int, bias: bool, dtype: torch.dtype):
        tp_size = get_tp_group().size
        super().__init__(divide(input_size, tp_size, "input size"), output_size, bias, dtype)

    def weight_loader(self, param, loaded, shard_id=None):
        if param.dim() == 1:  # the bias is added once, after the reduction
            _copy(param.data, loaded)
            return
        size = param.shape[1]
        _copy(param.data, loaded.narrow(1, self.tp.rank * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(x)
        # Each rank's partial sum, with its share of the LoRA update (A is split like the
        # weight, by input features: the shrink over this rank's features times B is this
        # rank's part of the delta), summed over ranks; the bias is added once, after.
        out = linear(x, self.weight, kernels=self.kernels)
        if self.lora is not None:
            self.lora.apply(x, out)
        out = self.tp.all_reduce(out)
        return out if self.bias is None else out + self.bias


def _copy(target: torch.Tensor, source) -> None:
    """source: a tensor or a CheckpointTensor (read here)."""
    if target.shape != source.shape:
        raise ValueError(f"checkpoint tensor of shape {tuple(source.shape)} does not fit a "
                         f"parameter of shape {tuple(target.shape)}")
    target.copy_(as_tensor(source))
