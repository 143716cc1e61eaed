"""What multi-adapter LoRA adds to Llama-3-8B's projections: base matmul alone, base + LoRA with
the Triton kernels, base + LoRA with the torch path (kernels/lora.py), in bfloat16, rank 16.

Layers: qkv (4096 -> 4096 | 1024 | 1024, one LoRA per slice, `column_offset` into the merged
output), o (4096 -> 4096), gate_up (4096 -> 14336 | 14336), down (14336 -> 4096). Batches:
1, 32 and 256 decode tokens and a 4 x 2048-token prefill. Adapters: 0 (every token on the base
model: what calling the kernels costs when nothing uses them), 1, 4 or 8, spread round-robin
over the sequences (`spread_slots`): decode tokens of different adapters interleave, a prefill
sequence's tokens share one adapter.

Each timed call follows an L2 flush (the weights of one layer would not be in L2 in a real step)
and is timed alone with CUDA events; medians are reported. "overhead" is (base + LoRA) / base - 1.
"max_abs_diff" compares the Triton and torch results of the same case (a check that the kernels
compiled for this GPU agree with the reference). FLOPs and compulsory bytes of the LoRA part
are counted by `lora_flops` and `lora_bytes`.

Run on a CUDA machine from the repository root (with infernetes importable):
    python benchmarks/gpu/bench_lora.py [--device cuda:0] > lora.json
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from infernetes.benchmarks.gpu.bench_small_kernels import l2_flush_buffer, time_ms
from infernetes.kernels import lora as torch_lora
from infernetes.kernels.triton import lora as triton_lora

RANK = 16
ADAPTER_COUNTS = (0, 1, 4, 8)
WARMUP, REPEATS = 3, 20
Y_BYTES = 4  # the float32 intermediate of shrink -> expand


@dataclass(frozen=True, slots=True)
class LoRALayer:
    """A linear layer whose output merges `slices` projections, each with its own LoRA."""
    name: str
    in_features: int
    slices: tuple[int, ...]  # out_features of each merged projection, in column order

    @property
    def total_out(self) -> int:
        return sum(self.slices)


@dataclass(frozen=True, slots=True)
class Batch:
    name: str
    num_seqs: int
    tokens_per_seq: int  # 1: decode

    @property
    def num_tokens(self) -> int:
        return self.num_seqs * self.tokens_per_seq


LLAMA_8B_LAYERS = (
    LoRALayer("qkv", 4096, (4096, 1024, 1024)),
    LoRALayer("o", 4096, (4096,)),
    LoRALayer("gate_up", 4096, (14336, 14336)),
    LoRALayer("down", 14336, (4096,)),
)
BATCHES = (Batch("decode-1", 1, 1), Batch("decode-32", 32, 1), Batch("decode-256", 256, 1),
           Batch("prefill-4x2048", 4, 2048))


# -- the batch's slots and what they cost ----------------------------------------------------

def spread_slots(batch: Batch, num_adapters: int) -> list[int]:
    """Slot per token: sequence i uses adapter i % num_adapters (-1 for all when there are
    none); a sequence's tokens are contiguous, as the engine lays them out."""
    slots = []
    for seq in range(batch.num_seqs):
        slot = seq % num_adapters if num_adapters else -1
        slots += [slot] * batch.tokens_per_seq
    return slots


def base_flops(num_tokens: int, layer: LoRALayer) -> int:
    return 2 * num_tokens * layer.in_features * layer.total_out


def lora_flops(num_lora_tokens: int, layer: LoRALayer, rank: int) -> int:
    """Shrink (once per slice: each reads x) and expand, for the tokens with an adapter."""
    per_token = rank * (len(layer.slices) * layer.in_features + layer.total_out)
    return 2 * num_lora_tokens * per_token


def lora_bytes(num_tokens: int, num_lora_tokens: int, num_adapters_used: int,
               layer: LoRALayer, rank: int, itemsize: int) -> int:
    """Compulsory traffic of the LoRA part: each used adapter's A and B once, x read once per
    slice for the tokens with an adapter, y written and read (float32, every token), and the
    base output's slice read and written for the tokens with an adapter."""
    num_slices = len(layer.slices)
    weights = num_adapters_used * rank * (num_slices * layer.in_features + layer.total_out)
    x = num_lora_tokens * num_slices * layer.in_features
    base = 2 * num_lora_tokens * layer.total_out
    y = 2 * num_tokens * num_slices * rank * Y_BYTES
    return (weights + x + base) * itemsize + y


# -- cases -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Case:
    layer: LoRALayer
    batch: Batch
    num_adapters: int
    out: torch.Tensor  # [num_tokens, total_out]: what every closure writes
    base: Callable[[], Any]
    triton: Callable[[], Any]
    torch: Callable[[], Any]


def build_case(layer: LoRALayer, batch: Batch, num_adapters: int, rank: int,
               dtype: torch.dtype, device: torch.device,
               num_slots: int = max(ADAPTER_COUNTS)) -> Case:
    """Random inputs and adapters (scaled so outputs stay O(1)), and the three closures. Each
    closure recomputes the base output into `out` first, so repeats do not accumulate."""
    gen = torch.Generator(device=device).manual_seed(batch.num_tokens + 7 * num_adapters)

    def randn(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(size, generator=gen, device=device)).to(dtype)

    n, k = batch.num_tokens, layer.in_features
    x = randn(n, k)
    weight = randn(layer.total_out, k, scale=k ** -0.5)
    adapters = [(randn(num_slots, rank, k, scale=k ** -0.5),
                 randn(num_slots, out_features, rank, scale=rank ** -0.5))
                for out_features in layer.slices]
    offsets = [sum(layer.slices[:i]) for i in range(len(layer.slices))]
    token_slots = torch.tensor(spread_slots(batch, num_adapters), dtype=torch.int32,
                               device=device)
    out = torch.empty(n, layer.total_out, dtype=dtype, device=device)

    def base() -> None:
        torch.mm(x, weight.t(), out=out)

    def with_lora(apply: Callable[..., None]) -> Callable[[], None]:
        def run() -> None:
            base()
            for (lora_a, lora_b), offset in zip(adapters, offsets):
                apply(x, out, lora_a, lora_b, token_slots, offset)
        return run

    return Case(layer, batch, num_adapters, out, base, with_lora(triton_lora.apply_lora),
                with_lora(torch_lora.apply_lora))


# -- timing ----------------------------------------------------------------------------------

def measure(case: Case, rank: int, flush: torch.Tensor) -> dict[str, Any]:
    case.triton()
    triton_out = case.out.clone()
    case.torch()
    max_abs_diff = (triton_out.float() - case.out.float()).abs().max().item()
    base_ms = time_ms(case.base, flush, WARMUP, REPEATS)
    triton_ms = time_ms(case.triton, flush, WARMUP, REPEATS)
    torch_ms = time_ms(case.torch, flush, WARMUP, REPEATS)
    n = case.batch.num_tokens
    slots = spread_slots(case.batch, case.num_adapters)
    num_lora_tokens = sum(slot >= 0 for slot in slots)
    used = len({slot for slot in slots if slot >= 0})
    itemsize = case.out.element_size()
    return {
        "layer": case.layer.name, "batch": case.batch.name, "num_tokens": n,
        "num_adapters": case.num_adapters,
        "base_us": round(base_ms * 1e3, 2),
        "triton_us": round(triton_ms * 1e3, 2), "torch_us": round(torch_ms * 1e3, 2),
        "triton_overhead": round(triton_ms / base_ms - 1, 3),
        "torch_overhead": round(torch_ms / base_ms - 1, 3),
        "base_gflop": round(base_flops(n, case.layer) / 1e9, 3),
        "lora_mflop": round(lora_flops(num_lora_tokens, case.layer, rank) / 1e6, 3),
        "lora_mb": round(lora_bytes(n, num_lora_tokens, used, case.layer, rank,
                                    itemsize) / 1e6, 3),
        "max_abs_diff": max_abs_diff,
    }


def run(device: str | torch.device = "cuda", layers: tuple[LoRALayer, ...] = LLAMA_8B_LAYERS,
        batches: tuple[Batch, ...] = BATCHES,
        adapter_counts: tuple[int, ...] = ADAPTER_COUNTS, rank: int = RANK) -> dict[str, Any]:
    """Time every (layer, batch, adapter count) -> a JSON-ready report."""
    device = torch.device(device)
    flush = l2_flush_buffer(device)
    dtype = torch.bfloat16
    results = []
    with torch.cuda.device(device):
        for layer in layers:
            for batch in batches:
                for num_adapters in adapter_counts:
                    case = build_case(layer, batch, num_adapters, rank, dtype, device)
                    results.append(measure(case, rank, flush))
                    del case
    return {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "rank": rank,
        "layers": [asdict(layer) for layer in layers],
        "timing": f"median of {REPEATS} calls, each after an L2 flush, CUDA events",
        "results": results,
    }


if __name__ == "__main__":
    from infernetes.benchmarks.gpu.common import cuda_bench_main
    cuda_bench_main(run, __doc__)
