"""The small Triton kernels against their torch references at Llama-8B shapes, in bfloat16.

For 1, 64, 512 and 4096 tokens, each op runs as the Triton kernel and as its torch reference
(the KV store's baseline is the engine's torch path, `kv_store_index` + `store_kv_cache`: the
reference drops padding slots with a host sync). Each timed call follows an L2 flush and is timed
on its own with CUDA events; the median is reported. Bandwidth is the op's compulsory bytes (each
input read once, each output written once; see the `*_bytes` functions) over that time, for both
implementations, so the two columns compare directly and against the GPU's peak. The flush
also keeps the GPU busy while the call is enqueued, so host launch overhead shows in a time only
where it exceeds the flush (~0.1 ms; e.g. the many-op torch references at 1 token): that is the
eager cost, which a CUDA graph would hide.

Run on a CUDA machine from the repository root (well under a minute on an H100):
    python benchmarks/gpu/bench_small_kernels.py > small_kernels.json
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from infernetes.kernels.paged_attention import kv_store_index
from infernetes.kernels.paged_attention import store_kv_cache as torch_store_kv_cache
from infernetes.kernels.triton.activation import reference_silu_and_mul, silu_and_mul
from infernetes.kernels.triton.kv_store import store_kv_cache
from infernetes.kernels.triton.rms_norm import reference_rms_norm, rms_norm
from infernetes.kernels.triton.rotary import apply_rotary, reference_apply_rotary
from infernetes.runtime.layers.rotary import RotaryEmbedding
from infernetes.runtime.model_config import RopeConfig

TOKEN_COUNTS = (1, 64, 512, 4096)
BLOCK_SIZE = 16
MAX_POSITION = 8192
EPS = 1e-5
WARMUP, REPEATS = 5, 30
L2_FLUSH_BYTES = 256 << 20  # larger than any current GPU's L2
INDEX_BYTES = 8  # int64 slot_mapping and positions


@dataclass(frozen=True, slots=True)
class ModelShape:
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


LLAMA_8B = ModelShape(hidden=4096, intermediate=14336, num_heads=32, num_kv_heads=8,
                      head_dim=128)


# -- compulsory bytes per call ---------------------------------------------------------------

def kv_store_bytes(num_tokens: int, num_kv_heads: int, head_dim: int, itemsize: int) -> int:
    """Read key and value, write them into the caches (same dtype), read the slots."""
    return 4 * num_tokens * num_kv_heads * head_dim * itemsize + num_tokens * INDEX_BYTES


def rms_norm_bytes(num_tokens: int, hidden: int, itemsize: int, with_residual: bool) -> int:
    """Read x (and residual) and the weight, write out (and the new residual)."""
    rows = 4 if with_residual else 2
    return (rows * num_tokens + 1) * hidden * itemsize


def rotary_bytes(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 itemsize: int) -> int:
    """Read and write query and key, read the positions and one float32 cache row per token."""
    qk = 2 * num_tokens * (num_heads + num_kv_heads) * head_dim * itemsize
    return qk + num_tokens * (INDEX_BYTES + head_dim * 4)


def silu_and_mul_bytes(num_tokens: int, intermediate: int, itemsize: int) -> int:
    """Read gate and up, write the product."""
    return 3 * num_tokens * intermediate * itemsize


# -- cases -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Case:
    op: str
    num_tokens: int
    bytes: int
    triton: Callable[[], Any]
    torch: Callable[[], Any]


def build_cases(shape: ModelShape, num_tokens: int, dtype: torch.dtype,
                device: torch.device) -> list[Case]:
    """Inputs for every op at one token count, with each implementation as a closure. In-place
    ops rotate/overwrite the same buffers on every call; values stay finite over the repeats."""
    gen = torch.Generator(device=device).manual_seed(num_tokens)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen, device=device).to(dtype)

    itemsize = dtype.itemsize
    x, residual, weight = randn(num_tokens, shape.hidden), randn(num_tokens, shape.hidden), \
        randn(shape.hidden)
    out = torch.empty_like(x)

    query = randn(num_tokens, shape.num_heads, shape.head_dim)
    key = randn(num_tokens, shape.num_kv_heads, shape.head_dim)
    value = randn(num_tokens, shape.num_kv_heads, shape.head_dim)
    positions = torch.randint(0, MAX_POSITION, (num_tokens,), generator=gen, device=device)
    rope = RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0)
    cos_sin = RotaryEmbedding(shape.head_dim, MAX_POSITION, rope).cos_sin.to(device)

    num_blocks = 2 * -(-num_tokens // BLOCK_SIZE)
    cache_shape = (num_blocks, shape.num_kv_heads, BLOCK_SIZE, shape.head_dim)
    key_cache = torch.zeros(cache_shape, dtype=dtype, device=device)
    value_cache = torch.zeros_like(key_cache)
    slot_mapping = torch.randperm(num_blocks * BLOCK_SIZE, generator=gen,
                                  device=device)[:num_tokens]

    gate_up = randn(num_tokens, 2 * shape.intermediate)
    act_out = torch.empty(num_tokens, shape.intermediate, dtype=dtype, device=device)

    def torch_kv_store() -> None:
        index = kv_store_index(slot_mapping, shape.num_kv_heads, BLOCK_SIZE)
        torch_store_kv_cache(key, value, key_cache, value_cache, index)

    n = num_tokens
    return [
        Case("store_kv_cache", n,
             kv_store_bytes(n, shape.num_kv_heads, shape.head_dim, itemsize),
             lambda: store_kv_cache(key, value, key_cache, value_cache, slot_mapping),
             torch_kv_store),
        Case("rms_norm", n, rms_norm_bytes(n, shape.hidden, itemsize, with_residual=False),
             lambda: rms_norm(x, weight, EPS, out=out),
             lambda: reference_rms_norm(x, weight, EPS)),
        Case("rms_norm_residual", n,
             rms_norm_bytes(n, shape.hidden, itemsize, with_residual=True),
             lambda: rms_norm(x, weight, EPS, residual, out=out),
             lambda: reference_rms_norm(x, weight, EPS, residual)),
        Case("apply_rotary", n,
             rotary_bytes(n, shape.num_heads, shape.num_kv_heads, shape.head_dim, itemsize),
             lambda: apply_rotary(query, key, positions, cos_sin),
             lambda: reference_apply_rotary(query, key, positions, cos_sin)),
        Case("silu_and_mul", n, silu_and_mul_bytes(n, shape.intermediate, itemsize),
             lambda: silu_and_mul(gate_up, out=act_out),
             lambda: reference_silu_and_mul(gate_up)),
    ]


# -- timing ----------------------------------------------------------------------------------

def time_ms(fn: Callable[[], Any], flush: torch.Tensor, warmup: int = WARMUP,
            repeats: int = REPEATS) -> float:
    """Median of `repeats` calls, each after an L2 flush, each timed alone with CUDA events
    (also the LoRA benchmark's timer)."""
    for _ in range(warmup):
        fn()
    pairs = []
    for _ in range(repeats):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in pairs)


def l2_flush_buffer(device: torch.device) -> torch.Tensor:
    """The buffer time_ms zeroes before each call, on `device`, which must be a GPU (the
    timer uses CUDA events); ValueError naming the device otherwise."""
    if device.type != "cuda":
        raise ValueError(f"device: the benchmark times with CUDA events, got {device}")
    return torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)


def run(device: str | torch.device = "cuda", shape: ModelShape = LLAMA_8B,
        token_counts: tuple[int, ...] = TOKEN_COUNTS) -> dict[str, Any]:
    """Time every op at every token count -> a JSON-ready report."""
    device = torch.device(device)
    flush = l2_flush_buffer(device)
    dtype = torch.bfloat16
    results = []
    with torch.cuda.device(device):
        for num_tokens in token_counts:
            for case in build_cases(shape, num_tokens, dtype, device):
                triton_ms = time_ms(case.triton, flush)
                torch_ms = time_ms(case.torch, flush)
                results.append({
                    "op": case.op, "num_tokens": num_tokens, "bytes": case.bytes,
                    "triton_us": round(triton_ms * 1e3, 2), "torch_us": round(torch_ms * 1e3, 2),
                    "triton_gb_per_s": round(case.bytes / (triton_ms * 1e6), 1),
                    "torch_gb_per_s": round(case.bytes / (torch_ms * 1e6), 1),
                    "speedup": round(torch_ms / triton_ms, 2),
                })
    return {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "shape": asdict(shape),
        "timing": f"median of {REPEATS} calls, each after an L2 flush, CUDA events",
        "results": results,
    }


if __name__ == "__main__":
    from infernetes.benchmarks.gpu.common import cuda_bench_main
    cuda_bench_main(run, __doc__)
