"""Triton split-KV paged decode attention against the naive float32 reference, on odd shapes:
mixed sequence lengths, GQA groups 1 to 7, head sizes 16 to 256, cache blocks of 1 to 32 keys,
block tables with holes, shared prefix blocks and garbage (NaN, huge) wherever a key must not be
read, sliding windows, and split counts from 1 to more splits than blocks."""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kernel_testing import DEVICE, ON_GPU, assert_close, poisoned
from infernetes.kernels.paged_attention import decode_key_mask
from infernetes.kernels.paged_attention import paged_decode_attention as torch_paged_decode
from infernetes.kernels.triton.decode_attention import (
    MAX_SPLITS, choose_num_splits, paged_decode_attention, reference_paged_decode_attention)

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "gpu" / "bench_decode_attention.py"


@dataclass(frozen=True)
class Case:
    seq_lens: tuple[int, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    num_splits: int | None = None  # None: the launcher's heuristic
    sliding_window: int | None = None
    shared_prefix_blocks: int = 0  # sequence 1 reads sequence 0's first blocks
    strided_views: bool = False  # K and V views of one [num_blocks, 2, ...] tensor; a wide table
    scale_factor: float = 1.0  # times 1/sqrt(head_dim): larger makes the softmax peakier
    # The key at this position (or each sequence's last) matches its queries: the split holding
    # it has the largest log-sum-exp, so the merge must rescale what came before it.
    needle: int | None = None


CASES = {
    "d64-g4-bs16-shared": Case((129, 33, 1, 7), 8, 2, 64, 16, shared_prefix_blocks=2),
    "d80-g7-bs8-3splits": Case((129, 33, 7, 1), 7, 1, 80, 8, num_splits=3,
                               shared_prefix_blocks=3, strided_views=True),
    "d64-g2-bs1-1split": Case((1, 7, 33, 129), 4, 2, 64, 1, num_splits=1),
    "d80-g1-bs32-700": Case((700, 5), 2, 2, 80, 32, num_splits=3, scale_factor=3.0),
    "more-splits-than-blocks": Case((129, 33, 1, 7), 4, 1, 64, 32, num_splits=8),
    "40-splits-merged-in-chunks": Case((700, 33), 4, 2, 64, 8, num_splits=40, scale_factor=3.0,
                                       needle=600),
    "window-bs8": Case((129, 33, 1, 7), 8, 2, 64, 8, num_splits=3, sliding_window=20),
    "window-empty-splits": Case((700, 40), 4, 2, 80, 16, num_splits=5, sliding_window=100),
    "bs256-window-mid-block": Case((300, 5), 4, 2, 64, 256, num_splits=2, sliding_window=100),
    "d16-tiny-model": Case((5, 40), 4, 2, 16, 16, num_splits=2),
    "d96": Case((5, 40), 4, 1, 96, 16, num_splits=2),
    "d128": Case((5, 40), 4, 1, 128, 16, num_splits=2),
    "d256": Case((5, 40), 4, 1, 256, 16, num_splits=2),
}
if ON_GPU:  # Llama-3-8B shapes at 128k keys: too slow for the interpreter
    CASES["long-128k"] = Case((131072, 100003), 32, 8, 128, 16, scale_factor=3.0,
                              needle=120000)


def _make_inputs(case: Case, dtype: torch.dtype, seed: int = 0):
    """(query, key_cache, value_cache, block_tables, seq_lens) with each sequence in shuffled
    blocks. Every cache row that must not be read holds NaN or the dtype's largest value: the
    blocks that unused and out-of-window table entries point to, and the rows of a sequence's
    last block past its end."""
    gen = torch.Generator().manual_seed(seed)
    bs, lens = case.block_size, case.seq_lens
    needed = [-(-length // bs) for length in lens]
    width = max(needed) + 2  # trailing entries no key uses
    num_blocks = sum(needed) + 4
    free = torch.randperm(num_blocks, generator=gen).tolist()
    nan_block, huge_block = free.pop(), free.pop()
    garbage = [nan_block, huge_block] * width
    table = []
    for seq, length in enumerate(lens):
        shared = case.shared_prefix_blocks if seq == 1 else 0
        assert shared * bs <= min(lens[0], length), "a shared block must hold keys of both"
        row = table[0][:shared] if shared else []
        row += [free.pop() for _ in range(needed[seq] - shared)]
        if case.sliding_window is not None:  # blocks wholly before the window: garbage
            skipped = max(0, length - case.sliding_window) // bs
            row[:skipped] = garbage[:skipped]
        table.append(row + garbage[:width - len(row)])

    shape = (num_blocks, case.num_kv_heads, bs, case.head_dim)
    kv = torch.randn((num_blocks, 2) + shape[1:], generator=gen).to(dtype)
    huge = torch.finfo(dtype).max
    kv[nan_block], kv[huge_block] = float("nan"), huge
    for seq, length in enumerate(lens):
        if length % bs:  # rows past the end of the last block
            kv[table[seq][needed[seq] - 1], :, :, length % bs:] = float("nan")
    query = torch.randn(len(lens), case.num_heads, case.head_dim, generator=gen).to(dtype)
    if case.needle is not None:
        group = case.num_heads // case.num_kv_heads
        for seq, length in enumerate(lens):
            pos = min(case.needle, length - 1)
            queries = query[seq].view(case.num_kv_heads, group, case.head_dim).float()
            kv[table[seq][pos // bs], 0, :, pos % bs] = queries.mean(dim=1).to(dtype)
    if case.strided_views:
        key_cache, value_cache = kv[:, 0], kv[:, 1]
        wide = torch.tensor([row + garbage[:3] for row in table], dtype=torch.int32)
        block_tables = wide[:, :width]
    else:
        key_cache, value_cache = kv[:, 0].contiguous(), kv[:, 1].contiguous()
        block_tables = torch.tensor(table, dtype=torch.int32)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    return tuple(t.to(DEVICE) for t in (query, key_cache, value_cache, block_tables, seq_lens))


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_matches_reference(case: Case, dtype: torch.dtype):
    query, key_cache, value_cache, block_tables, seq_lens = _make_inputs(case, dtype)
    scale = case.scale_factor / math.sqrt(case.head_dim)
    out = poisoned(query.shape, dtype)
    returned = paged_decode_attention(query, key_cache, value_cache, block_tables, seq_lens,
                                      scale, sliding_window=case.sliding_window,
                                      num_splits=case.num_splits, out=out)
    assert returned.data_ptr() == out.data_ptr() and returned.dtype == dtype
    expected = reference_paged_decode_attention(query, key_cache, value_cache, block_tables,
                                                seq_lens, scale, case.sliding_window)
    assert_close(out, expected, dtype)


def test_without_out_returns_a_new_tensor(dtype: torch.dtype):
    case = Case((1, 7, 33, 129), 8, 2, 80, 16, num_splits=3)
    inputs = _make_inputs(case, dtype, seed=1)
    result = paged_decode_attention(*inputs, 0.1)
    assert result.shape == inputs[0].shape and result.dtype == dtype
    assert_close(result, reference_paged_decode_attention(*inputs, 0.1), dtype)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_sequence_of_length_zero_gives_zeros(num_splits: int):
    """CUDA-graph padding: a batch slot with no keys gets output 0, and its neighbours are
    unaffected."""
    case = Case((1, 33), 4, 2, 64, 8)
    query, key_cache, value_cache, block_tables, _ = _make_inputs(case, torch.float32)
    seq_lens = torch.tensor([0, 33], dtype=torch.int32, device=DEVICE)
    out = paged_decode_attention(query, key_cache, value_cache, block_tables, seq_lens, 0.1,
                                 num_splits=num_splits)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    expected = reference_paged_decode_attention(query, key_cache, value_cache, block_tables,
                                                seq_lens, 0.1)
    assert_close(out, expected, torch.float32)


def test_length_past_the_table_reads_only_the_table():
    """A seq_len larger than the table holds must not read past the table's row: it counts as
    the table's capacity (5 blocks of 8 keys here)."""
    gen = torch.Generator().manual_seed(3)
    key_cache, value_cache = torch.randn(2, 12, 2, 8, 64, generator=gen).to(DEVICE)
    block_tables = torch.randperm(12, generator=gen)[:10].view(2, 5).to(torch.int32).to(DEVICE)
    query = torch.randn(2, 4, 64, generator=gen).to(DEVICE)
    too_long = torch.tensor([1000, 41], dtype=torch.int32, device=DEVICE)
    capacity = torch.full((2,), 40, dtype=torch.int32, device=DEVICE)
    out = paged_decode_attention(query, key_cache, value_cache, block_tables, too_long, 0.1,
                                 num_splits=2)
    expected = reference_paged_decode_attention(query, key_cache, value_cache, block_tables,
                                                capacity, 0.1)
    assert_close(out, expected, torch.float32)


@pytest.mark.parametrize("window", [None, 9])
def test_reference_agrees_with_the_torch_path(window):
    """The reference (per sequence, valid keys only) against kernels/paged_attention.py's
    batched path, on a table whose every entry points at real data."""
    gen = torch.Generator().manual_seed(2)
    key_cache = torch.randn(30, 2, 4, 64, generator=gen)
    value_cache = torch.randn(30, 2, 4, 64, generator=gen)
    block_tables = torch.randperm(30, generator=gen)[:24].view(3, 8).to(torch.int32)
    lens = [1, 17, 32]
    query = torch.randn(3, 6, 64, generator=gen)
    mask = decode_key_mask(lens, 8 * 4, window)
    expected = torch_paged_decode(query, key_cache, value_cache, block_tables.long(), mask, 0.2)
    actual = reference_paged_decode_attention(query, key_cache, value_cache, block_tables,
                                              torch.tensor(lens, dtype=torch.int32), 0.2, window)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def _bad_inputs(change: str):
    query = torch.randn(2, 4, 64, device=DEVICE)
    key_cache = torch.randn(6, 2, 8, 64, device=DEVICE)
    value_cache = torch.randn(6, 2, 8, 64, device=DEVICE)
    block_tables = torch.zeros(2, 3, dtype=torch.int32, device=DEVICE)
    seq_lens = torch.ones(2, dtype=torch.int32, device=DEVICE)
    args = dict(query=query, key_cache=key_cache, value_cache=value_cache,
                block_tables=block_tables, seq_lens=seq_lens, scale=0.1)
    if change == "block_tables int64":
        args["block_tables"] = block_tables.long()
    elif change == "seq_lens int64":
        args["seq_lens"] = seq_lens.long()
    elif change == "seq_lens length":
        args["seq_lens"] = seq_lens[:1]
    elif change == "block_tables transposed":
        args["block_tables"] = torch.zeros(3, 2, dtype=torch.int32, device=DEVICE).t()
    elif change == "head_dim 72":
        args["query"] = torch.randn(2, 4, 72, device=DEVICE)
        args["key_cache"] = args["value_cache"] = torch.randn(6, 2, 8, 72, device=DEVICE)
    elif change == "block_size 12":
        args["key_cache"] = args["value_cache"] = torch.randn(6, 2, 12, 64, device=DEVICE)
    elif change == "mismatched heads":
        args["query"] = torch.randn(2, 5, 64, device=DEVICE)
    elif change == "cache dtype":
        args["key_cache"] = key_cache.half()
    elif change == "value shape":
        args["value_cache"] = torch.randn(6, 2, 8, 128, device=DEVICE)
    elif change == "query not contiguous in head_dim":
        args["query"] = torch.randn(2, 64, 4, device=DEVICE).transpose(1, 2)
    elif change == "out dtype":
        args["out"] = torch.empty(2, 4, 64, dtype=torch.float16, device=DEVICE)
    elif change == "num_splits 0":
        args["num_splits"] = 0
    return args


@pytest.mark.parametrize("change,named", [
    ("block_tables int64", "block_tables"), ("seq_lens int64", "seq_lens"),
    ("seq_lens length", "seq_lens"), ("block_tables transposed", "block_tables"),
    ("head_dim 72", "query head_dim"), ("block_size 12", "key_cache block_size"),
    ("mismatched heads", "query num_heads"), ("cache dtype", "key_cache dtype"),
    ("value shape", "value_cache"), ("query not contiguous in head_dim", "query"),
    ("out dtype", "out"), ("num_splits 0", "num_splits"),
])
def test_rejects_bad_inputs(change: str, named: str):
    with pytest.raises(ValueError, match=f"^{named}"):
        paged_decode_attention(**_bad_inputs(change))


def test_num_splits_fills_the_gpu_from_shapes_alone():
    # Few (sequence, KV head) programs and a long table: split until about 4 programs per SM.
    assert 1 * 8 * choose_num_splits(1, 8, 8192, 16, num_sms=132) >= 2 * 132
    assert choose_num_splits(1, 8, 8192, 16, num_sms=132) <= MAX_SPLITS
    # Enough programs already: one split, no merge pass.
    assert choose_num_splits(256, 8, 8192, 16, num_sms=132) == 1
    # A short table: no split shorter than ~128 keys, and no split that covers no block.
    assert choose_num_splits(1, 8, 2, 16, num_sms=132) == 1
    for max_blocks in (3, 5, 17, 100):
        splits = choose_num_splits(1, 1, max_blocks, 1 << 10, num_sms=132)
        blocks_per_split = -(-max_blocks // splits)
        assert (splits - 1) * blocks_per_split < max_blocks


def test_benchmark_counts_kv_bytes():
    spec = importlib.util.spec_from_file_location("bench_decode_attention", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # Llama-3-8B: 8 KV heads x 128 dims x 2 bytes x (K + V) = 4 KiB per token.
    assert bench.kv_bytes_read(1, 1024) == 4 << 20
    assert bench.kv_bytes_read(64, 131072) == 64 * 131072 * 4096
    # (K + V) x 3 sequences x 10 keys x 2 KV heads x 80 dims x 4 bytes.
    assert bench.kv_bytes_read(3, 10, num_kv_heads=2, head_dim=80, element_size=4) == 38400
    assert bench.copy_traffic_bytes(1 << 30) == 2 << 30
    assert bench.gigabytes_per_second(3_000_000_000, 1.5) == 2.0
