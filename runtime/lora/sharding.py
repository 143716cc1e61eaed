"""A LoRA module split across tensor-parallel ranks the way its base projection is.

Column-parallel projections (q, k, v, gate, up) give each rank a slice of the output
features: A ([rank, in]) is whole on every rank, B ([out, rank]) is cut by rows like the
weight (k and v by KV heads, replicated where ranks outnumber them). Row-parallel ones (o,
down) give each rank a slice of the input features: A is cut by columns, B is whole; each
rank's update is a partial sum that the layer's all-reduce adds up with the base output.
"""
from __future__ import annotations

from infernetes.runtime.lora.adapter import LoRAModuleWeights, projection_features
from infernetes.runtime.model_config import ModelArchConfig
from infernetes.runtime.parallel.sharding import kv_heads_per_rank, kv_shard_index
from infernetes.runtime.parallel.state import TensorParallelGroup

ROW_PARALLEL = frozenset({"o", "down"})


def _output_slice(arch: ModelArchConfig, projection: str, tp: TensorParallelGroup
                  ) -> tuple[int, int]:
    """(first row, rows) of a column-parallel projection's output held by rank tp.rank."""
    if projection in ("k", "v"):
        size = kv_heads_per_rank(arch.num_key_value_heads, tp.size) * arch.head_dim
        return kv_shard_index(arch.num_key_value_heads, tp.size, tp.rank) * size, size
    size = projection_features(arch, projection)[1] // tp.size
    return tp.rank * size, size


def sharded_features(arch: ModelArchConfig, projection: str, tp: TensorParallelGroup
                     ) -> tuple[int, int]:
    """(in_features, out_features) of the projection on one rank."""
    in_features, out_features = projection_features(arch, projection)
    if projection in ROW_PARALLEL:
        return in_features // tp.size, out_features
    return in_features, _output_slice(arch, projection, tp)[1]


def shard_module(weights: LoRAModuleWeights, arch: ModelArchConfig, projection: str,
                 tp: TensorParallelGroup) -> LoRAModuleWeights:
    """This rank's part of a module's weights (views of them)."""
    if tp.size == 1:
        return weights
    if projection in ROW_PARALLEL:
        size = weights.a.shape[1] // tp.size
        return LoRAModuleWeights(a=weights.a.narrow(1, tp.rank * size, size), b=weights.b)
    start, size = _output_slice(arch, projection, tp)
    return LoRAModuleWeights(a=weights.a, b=weights.b.narrow(0, start, size))
