"""How tensors split across tensor-parallel ranks: pure arithmetic on sizes, shared by the
parallel layers (runtime/layers/linear.py), their LoRA updates (runtime/lora/manager.py) and
the start-up checks (runtime/parallel/validation.py)."""
from __future__ import annotations


def divide(numerator: int, denominator: int, what: str) -> int:
    """numerator / denominator; ValueError naming `what` when it does not divide."""
    if numerator % denominator:
        raise ValueError(f"{what} ({numerator}) is not divisible by the tensor-parallel "
                         f"size ({denominator})")
    return numerator // denominator


def kv_heads_per_rank(num_kv_heads: int, tp_size: int) -> int:
    """KV heads each rank holds: a share of them, or one (replicated) with more ranks than
    KV heads."""
    return max(1, num_kv_heads // tp_size)


def kv_shard_index(num_kv_heads: int, tp_size: int, rank: int) -> int:
    """Which slice of kv_heads_per_rank KV heads rank `rank` holds: with more ranks than KV
    heads, consecutive ranks share (replicate) one head."""
    replicas = max(1, tp_size // num_kv_heads)
    return rank // replicas
