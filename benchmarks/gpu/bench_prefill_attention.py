"""Paged prefill/extend attention (kernels/triton/prefill_attention.py) on Llama-3-8B shapes.

Per batch: the kernel's median time (CUDA events, after warm-up), the FLOPs of the (query, key)
pairs that causal masking and the window leave visible (QK^T and PV, 2 FLOPs per multiply-add),
the resulting TFLOP/s, and that rate over a large bf16 torch.matmul measured in the same run. Pure
prefills also time torch's SDPA (is_causal, contiguous K/V) on the same shapes as a yardstick. For
1x8k, a few other tile configurations are timed too, to tune `default_tile_config`.
Self-contained (no `common` import), so tests import it for `attention_flops`.

Run on a CUDA machine, from the repository root with infernetes importable:
    python benchmarks/gpu/bench_prefill_attention.py > result.json
or through benchmarks/gpu/run_all.py, which calls `run(device)`.
"""
from __future__ import annotations

import statistics
import time

import torch

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16  # Llama-3-8B, bf16
DTYPE = torch.bfloat16
# name -> [(context_len, chunk_len)] per sequence
CASES = {
    "prefill-1x8192": [(0, 8192)],
    "prefill-4x2048": [(0, 2048)] * 4,
    "prefill-16x512": [(0, 512)] * 16,
    "extend-1x4096-after-4096": [(4096, 4096)],
    "extend-8x512-after-4096": [(4096, 512)] * 8,
}
SWEEP_CASE = "prefill-1x8192"
# (block_m, block_n, num_warps, num_stages), all spill-free for sm_90 at head_dim 128; each is
# one more compile (seconds), so the sweep is skipped past SWEEP_DEADLINE_S into the run
# (run_all.py gives a kernel benchmark 60 s).
SWEEP_CONFIGS = [(128, 64, 8, 2), (128, 128, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3)]
SWEEP_DEADLINE_S = 30.0
MATMUL_SIZE = 8192


def attention_flops(seqs: list[tuple[int, int]], num_heads: int, head_dim: int,
                    sliding_window: int | None = None) -> int:
    """FLOPs of attention over the visible (query, key) pairs only: new token i of a chunk after
    `context_len` cached tokens sees min(context_len + i + 1, window) keys; each pair costs
    head_dim multiply-adds in QK^T and head_dim in PV, per head."""
    pairs = 0
    for context_len, chunk_len in seqs:
        if sliding_window is None:
            pairs += chunk_len * context_len + chunk_len * (chunk_len + 1) // 2
        else:
            pairs += sum(min(context_len + i + 1, sliding_window) for i in range(chunk_len))
    return 4 * num_heads * head_dim * pairs


def _median_ms(fn, warmup: int = 3, reps: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _matmul_tflops(device) -> float:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=DTYPE, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=DTYPE, device=device)
    ms = _median_ms(lambda: torch.matmul(a, b), warmup=5)
    return 2 * MATMUL_SIZE ** 3 / (ms * 1e-3) / 1e12


def _make_inputs(seqs, device, generator):
    """Query, a cache holding exactly the batch's blocks in shuffled order, and the metadata."""
    blocks_per_seq = [-(-(c + n) // BLOCK_SIZE) for c, n in seqs]
    num_blocks = sum(blocks_per_seq)
    ids = torch.randperm(num_blocks, generator=generator).to(torch.int32)
    width = max(blocks_per_seq)
    block_tables = torch.zeros(len(seqs), width, dtype=torch.int32)
    offset = 0
    for seq, count in enumerate(blocks_per_seq):
        block_tables[seq, :count] = ids[offset:offset + count]
        offset += count
    cache_shape = (num_blocks, NUM_KV_HEADS, BLOCK_SIZE, HEAD_DIM)
    chunk_lens = [n for _, n in seqs]
    return dict(
        query=torch.randn(sum(chunk_lens), NUM_HEADS, HEAD_DIM, dtype=DTYPE, device=device),
        key_cache=torch.randn(cache_shape, dtype=DTYPE, device=device),
        value_cache=torch.randn(cache_shape, dtype=DTYPE, device=device),
        block_tables=block_tables.to(device),
        query_start_loc=torch.tensor([0] + chunk_lens).cumsum(0).to(torch.int32).to(device),
        context_lens=torch.tensor([c for c, _ in seqs], dtype=torch.int32, device=device),
        max_query_len=max(chunk_lens), scale=HEAD_DIM ** -0.5)


def _sdpa_ms(seqs, device) -> float | None:
    """torch SDPA on contiguous K/V (repeated to all heads), for batches of equal pure prefills."""
    if any(c for c, _ in seqs) or len({n for _, n in seqs}) != 1:
        return None
    shape = (len(seqs), NUM_HEADS, seqs[0][1], HEAD_DIM)
    q, k, v = (torch.randn(shape, dtype=DTYPE, device=device) for _ in range(3))
    return _median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True))


def run(device: str | torch.device = "cuda") -> dict:
    from infernetes.kernels.triton.prefill_attention import (
        TileConfig, default_tile_config, paged_prefill_attention)

    started = time.perf_counter()
    device = torch.device(device)
    if device.type != "cuda":
        raise RuntimeError(f"bench_prefill_attention: needs a CUDA device, got {device}")
    generator = torch.Generator().manual_seed(0)
    matmul = _matmul_tflops(device)
    result = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "shape": dict(num_heads=NUM_HEADS, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM,
                            block_size=BLOCK_SIZE, dtype=str(DTYPE).removeprefix("torch.")),
              "matmul_tflops": round(matmul, 1), "cases": {}}
    for name, seqs in CASES.items():
        args = _make_inputs(seqs, device, generator)
        out = torch.empty_like(args["query"])
        ms = _median_ms(lambda: paged_prefill_attention(**args, out=out))
        flops = attention_flops(seqs, NUM_HEADS, HEAD_DIM)
        tflops = flops / (ms * 1e-3) / 1e12
        config = default_tile_config(HEAD_DIM, args["max_query_len"], DTYPE)
        entry = {"seqs": len(seqs), "context_len": seqs[0][0], "chunk_len": seqs[0][1],
                 "tile_config": config._asdict(),
                 "ms": round(ms, 4), "gflop": round(flops / 1e9, 2),
                 "tflops": round(tflops, 1), "fraction_of_matmul": round(tflops / matmul, 3)}
        sdpa = _sdpa_ms(seqs, device)
        if sdpa is not None:
            entry["sdpa_ms"] = round(sdpa, 4)
            entry["sdpa_tflops"] = round(flops / (sdpa * 1e-3) / 1e12, 1)
        if name == SWEEP_CASE and time.perf_counter() - started < SWEEP_DEADLINE_S:
            sweep = {}
            for candidate in map(TileConfig._make, SWEEP_CONFIGS):
                candidate_ms = _median_ms(
                    lambda: paged_prefill_attention(**args, out=out, tile_config=candidate))
                sweep["{}x{}-w{}-s{}".format(*candidate)] = round(
                    flops / (candidate_ms * 1e-3) / 1e12, 1)
            entry["tile_sweep_tflops"] = sweep
        result["cases"][name] = entry
        del args, out
        torch.cuda.empty_cache()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


if __name__ == "__main__":
    from infernetes.benchmarks.gpu.common import cuda_bench_main
    cuda_bench_main(run, __doc__)
