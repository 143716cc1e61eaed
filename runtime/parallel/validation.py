"""Start-up checks of --tensor-parallel-size against the model and the machine: every error
names the flag, says which size of the model does not divide, and lists the sizes that work."""
from __future__ import annotations

import torch

from infernetes.runtime.config import ConfigError
from infernetes.runtime.model_config import ModelArchConfig


def tensor_parallel_problem(arch: ModelArchConfig, size: int) -> str | None:
    """Why `arch` cannot be split over `size` ranks, or None. Query heads and the MLP's
    intermediate size are cut evenly; KV heads are cut evenly or, with more ranks than KV
    heads, replicated (the ranks must then be a multiple of them)."""
    if arch.num_attention_heads % size:
        return f"the model's {arch.num_attention_heads} attention heads are not divisible by it"
    kv = arch.num_key_value_heads
    if kv % size and size % kv:
        return (f"the model's {kv} KV heads are neither divisible by it nor a divisor of it "
                f"(for replication)")
    if arch.intermediate_size % size:
        return f"the model's intermediate size {arch.intermediate_size} is not divisible by it"
    return None


def supported_sizes(arch: ModelArchConfig, largest: int = 16) -> list[int]:
    return [n for n in range(1, largest + 1) if tensor_parallel_problem(arch, n) is None]


def check_tensor_parallel(arch: ModelArchConfig, size: int, device: torch.device) -> None:
    """ConfigError naming --tensor-parallel-size when the model or the GPUs do not allow it."""
    if size == 1:
        return
    problem = tensor_parallel_problem(arch, size)
    if problem is not None:
        sizes = ", ".join(map(str, supported_sizes(arch)))
        raise ConfigError(f"--tensor-parallel-size {size}: {problem} (sizes this model "
                          f"supports, up to 16: {sizes})")
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if size > visible:
            raise ConfigError(f"--tensor-parallel-size {size} needs {size} GPUs, but "
                              f"{visible} {'is' if visible == 1 else 'are'} visible "
                              f"(CUDA_VISIBLE_DEVICES and the pod's nvidia.com/gpu limit "
                              f"decide which)")
