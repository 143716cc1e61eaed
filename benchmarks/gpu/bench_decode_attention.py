"""Paged decode attention (Triton, split-KV) on Llama-3-8B attention shapes: time per call and
the bandwidth it reaches, against the device's own copy bandwidth measured in the same run.

Shapes: 32 query heads, 8 KV heads, head_dim 128, block_size 16, bf16; every sequence of a batch
holds `context_len` keys in shuffled cache blocks. Decode attention reads each key and value
once, so its floor is KV bytes / bandwidth; "ratio_to_copy" is the achieved bandwidth over that
of a large device-to-device copy (which moves each byte twice: read and write).
Configurations whose KV cache would not fit in KV_MEMORY_FRACTION of free memory are skipped.

Run on a CUDA machine from the repository root (with infernetes importable):
    python benchmarks/gpu/bench_decode_attention.py > decode_attention.json
or through benchmarks/gpu/run_all.py, which calls `run(device)`.
"""
from __future__ import annotations

import math
import statistics

import torch

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
BATCH_SIZES = (1, 8, 64, 256)
CONTEXT_LENS = (1024, 8192, 32768, 131072)
KV_MEMORY_FRACTION = 0.6
COPY_BYTES = 1 << 30
TARGET_SECONDS_PER_CONFIG = 0.25


def kv_bytes_read(batch: int, context_len: int, num_kv_heads: int = NUM_KV_HEADS,
                  head_dim: int = HEAD_DIM, element_size: int = 2) -> int:
    """Bytes of keys and values one decode step reads: each sequence's context_len keys and
    values, for every KV head (once per KV head, whatever the GQA group size)."""
    return 2 * batch * context_len * num_kv_heads * head_dim * element_size


def copy_traffic_bytes(num_bytes: int) -> int:
    """Bytes a device-to-device copy of num_bytes moves: each byte is read once, written once."""
    return 2 * num_bytes


def gigabytes_per_second(num_bytes: int, seconds: float) -> float:
    return num_bytes / seconds / 1e9


def _time_call(fn, warmup: int = 3) -> float:
    """Median seconds per call, timed with CUDA events; the number of timed calls is chosen so
    that the configuration takes about TARGET_SECONDS_PER_CONFIG."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    estimate = start.elapsed_time(end) / 1e3
    iters = max(5, min(100, int(TARGET_SECONDS_PER_CONFIG / max(estimate, 1e-6))))
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _copy_bandwidth(device: torch.device) -> float:
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    seconds = _time_call(lambda: dst.copy_(src))
    return gigabytes_per_second(copy_traffic_bytes(COPY_BYTES), seconds)


def run(device: torch.device | str = "cuda") -> dict:
    from infernetes.kernels.triton.decode_attention import (
        _sm_count, choose_num_splits, paged_decode_attention, reference_paged_decode_attention)
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"bench_decode_attention needs a CUDA device, got {device}")
    torch.manual_seed(0)
    copy_gbps = _copy_bandwidth(device)
    element_size = torch.finfo(DTYPE).bits // 8
    torch.cuda.empty_cache()  # the copy's buffers
    free_bytes, _ = torch.cuda.mem_get_info(device)
    budget = KV_MEMORY_FRACTION * free_bytes
    configs = [(b, c) for b in BATCH_SIZES for c in CONTEXT_LENS]
    fitting = [(b, c) for b, c in configs
               if kv_bytes_read(b, c, element_size=element_size) <= budget]
    skipped = [{"batch": b, "context_len": c, "reason": "KV cache exceeds memory budget"}
               for b, c in configs if (b, c) not in fitting]
    num_blocks = max(b * -(-c // BLOCK_SIZE) for b, c in fitting)
    shape = (num_blocks, NUM_KV_HEADS, BLOCK_SIZE, HEAD_DIM)
    key_cache = torch.empty(shape, dtype=DTYPE, device=device).normal_()
    value_cache = torch.empty(shape, dtype=DTYPE, device=device).normal_()
    scale = 1.0 / math.sqrt(HEAD_DIM)

    results = []
    for batch, context_len in fitting:
        blocks_per_seq = -(-context_len // BLOCK_SIZE)
        block_tables = torch.randperm(num_blocks, device=device)[:batch * blocks_per_seq]
        block_tables = block_tables.view(batch, blocks_per_seq).to(torch.int32)
        seq_lens = torch.full((batch,), context_len, dtype=torch.int32, device=device)
        query = torch.randn(batch, NUM_HEADS, HEAD_DIM, dtype=DTYPE, device=device)
        out = torch.empty_like(query)
        args = (query, key_cache, value_cache, block_tables, seq_lens, scale)
        seconds = _time_call(lambda: paged_decode_attention(*args, out=out))
        kv_bytes = kv_bytes_read(batch, context_len, element_size=element_size)
        achieved = gigabytes_per_second(kv_bytes, seconds)
        row = {"batch": batch, "context_len": context_len,
               "num_splits": choose_num_splits(batch, NUM_KV_HEADS, blocks_per_seq, BLOCK_SIZE,
                                               _sm_count(device.index or 0)),
               "time_us": round(seconds * 1e6, 2), "kv_bytes": kv_bytes,
               "achieved_gbps": round(achieved, 1),
               "ratio_to_copy": round(achieved / copy_gbps, 3)}
        if batch * context_len <= 8 * 8192:  # small enough for the naive reference
            expected = reference_paged_decode_attention(*args)
            row["max_abs_err_vs_reference"] = (out.float() - expected).abs().max().item()
        results.append(row)
        del block_tables, query, out
    long_ratios = [r["ratio_to_copy"] for r in results if r["context_len"] >= 32768]
    return {"device": torch.cuda.get_device_name(device), "dtype": str(DTYPE),
            "shape": {"num_heads": NUM_HEADS, "num_kv_heads": NUM_KV_HEADS,
                      "head_dim": HEAD_DIM, "block_size": BLOCK_SIZE},
            "copy_gbps": round(copy_gbps, 1),
            # The goal: decode attention at >= 32k keys near the copy bandwidth.
            "long_context_ratio_to_copy": {"min": min(long_ratios, default=None),
                                           "max": max(long_ratios, default=None)},
            "results": results, "skipped": skipped}


if __name__ == "__main__":
    from infernetes.benchmarks.gpu.common import cuda_bench_main
    cuda_bench_main(run, __doc__)
