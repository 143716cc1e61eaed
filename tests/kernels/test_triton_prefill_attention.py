"""The Triton paged prefill/extend attention against its naive torch reference and the engine's
torch path. On CPU the kernel runs under Triton's interpreter, so shapes stay small.

Every cache starts full of NaN and block tables point their unused entries at a NaN block, so a
read of anything but the sequence's own tokens (past a chunk's end, an unused table entry, a block
that slid out of the window) turns the output into NaN and fails the test.
"""
from __future__ import annotations

import kernel_testing  # noqa: F401  (sets TRITON_INTERPRET before the kernel is imported)
import pytest
import torch
from kernel_testing import DEVICE, ON_GPU, TOLERANCE, assert_close, poisoned

from infernetes.benchmarks.gpu.bench_prefill_attention import attention_flops
from infernetes.kernels.paged_attention import decode_key_mask, kv_store_index
from infernetes.kernels.triton.prefill_attention import (
    TileConfig, paged_prefill_attention, reference_paged_prefill_attention)
from infernetes.runtime.layers.attention import Attention, AttentionMetadata, PrefillChunk

SMALL_TILES = TileConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)


def _batch(context_lens, chunk_lens, *, num_heads, num_kv_heads, head_dim, block_size, dtype,
           shared_prefix=0, seed=0, scale=None, device=DEVICE):
    """Kernel arguments for a batch, each sequence in shuffled blocks of a NaN-filled cache.

    Sequences 0 and 1 share their first `shared_prefix` cached tokens (the same blocks), as after
    a prefix-cache hit. Returns (kwargs for the op, NaN block id)."""
    gen = torch.Generator().manual_seed(seed)
    blocks_needed = [-(-(c + n) // block_size) for c, n in zip(context_lens, chunk_lens)]
    shared_blocks = shared_prefix // block_size
    num_blocks = sum(blocks_needed) - shared_blocks + 3
    cache_shape = (num_blocks, num_kv_heads, block_size, head_dim)
    key_cache = torch.full(cache_shape, float("nan"), dtype=dtype)
    value_cache = torch.full(cache_shape, float("nan"), dtype=dtype)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    nan_block = free.pop()
    width = max(blocks_needed) + 2
    block_tables = torch.full((len(context_lens), width), nan_block, dtype=torch.int32)
    for seq, (context_len, needed) in enumerate(zip(context_lens, blocks_needed)):
        shared = shared_blocks if seq == 1 else 0
        table = block_tables[0, :shared].tolist() + [free.pop() for _ in range(needed - shared)]
        block_tables[seq, :needed] = torch.tensor(table, dtype=torch.int32)
        first_new_token = shared * block_size  # shared tokens are written by sequence 0
        positions = torch.arange(first_new_token, context_len + chunk_lens[seq])
        blocks = torch.tensor(table)[positions // block_size]
        rows = positions % block_size
        for cache in (key_cache, value_cache):
            cache[blocks, :, rows] = torch.randn(len(positions), num_kv_heads, head_dim,
                                                 generator=gen).to(dtype)
    query = torch.randn(sum(chunk_lens), num_heads, head_dim, generator=gen).to(dtype)
    starts = torch.tensor([0] + chunk_lens).cumsum(0).to(torch.int32)
    args = dict(query=query, key_cache=key_cache, value_cache=value_cache,
                block_tables=block_tables, query_start_loc=starts,
                context_lens=torch.tensor(context_lens, dtype=torch.int32),
                max_query_len=max(chunk_lens), scale=scale or head_dim ** -0.5)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}, \
        nan_block


def _check(args, dtype, sliding_window=None, tile_config=None, kernel_args=None, out=None,
           fresh=False):
    """The kernel, into a poisoned out= (and, if `fresh`, by return value), against the
    reference."""
    expected = reference_paged_prefill_attention(**args, sliding_window=sliding_window,
                                                 out=torch.empty_like(args["query"],
                                                                      dtype=torch.float32))
    assert not expected.isnan().any(), "the test's own cache is wrong"
    # Long uniform attention averages V towards 0, where any output is within atol.
    assert expected.abs().mean() > 5 * TOLERANCE[dtype][0], "outputs too small to compare"
    kernel_args = kernel_args or args
    out = poisoned(args["query"].shape, dtype) if out is None else out
    returned = paged_prefill_attention(**kernel_args, sliding_window=sliding_window, out=out,
                                       tile_config=tile_config)
    assert returned is out
    assert_close(out, expected, dtype)
    if fresh:
        returned = paged_prefill_attention(**kernel_args, sliding_window=sliding_window,
                                           tile_config=tile_config)
        assert returned.dtype == dtype and returned.shape == args["query"].shape
        assert torch.equal(returned, out)


# Extends (later chunks, prefix-cache hits; the first two share their 16 cached tokens) and a
# pure prefill; chunks that fill no tile, several, and one past a tile.
CONTEXTS, CHUNKS = [16, 40, 0, 5], [7, 129, 33, 1]


@pytest.mark.parametrize("head_dim,group,num_kv_heads,block_size", [
    (64, 1, 2, 16), (64, 2, 2, 8), (80, 7, 1, 1), (80, 2, 1, 16)])
def test_mixed_batch_matches_reference(head_dim, group, num_kv_heads, block_size, dtype):
    args, _ = _batch(CONTEXTS, CHUNKS, num_heads=group * num_kv_heads,
                     num_kv_heads=num_kv_heads, head_dim=head_dim, block_size=block_size,
                     dtype=dtype, shared_prefix=16)
    _check(args, dtype, fresh=group == 1)


@pytest.mark.parametrize("head_dim", [96, 128, 256])
def test_other_head_sizes(head_dim, dtype):
    args, _ = _batch([0, 24], [20, 9], num_heads=2, num_kv_heads=1, head_dim=head_dim,
                     block_size=8, dtype=dtype)
    _check(args, dtype, fresh=True)


@pytest.mark.parametrize("window", [1, 6, 20, 200])
def test_sliding_window_never_reads_blocks_that_slid_out(window, dtype):
    """Small tiles, so the window's edge, the unmasked run and the diagonal are separate tiles;
    blocks wholly out of every query's window point at NaN in the kernel's table. An empty chunk
    writes nothing."""
    context_lens, chunk_lens, block_size = [0, 45, 30, 9], [50, 22, 0, 3], 4
    args, nan_block = _batch(context_lens, chunk_lens, num_heads=4, num_kv_heads=2,
                             head_dim=64, block_size=block_size, dtype=dtype, seed=window)
    slid_out = args["block_tables"].clone()
    for seq, context_len in enumerate(context_lens):
        first_visible_key = max(context_len - window + 1, 0)
        slid_out[seq, :first_visible_key // block_size] = nan_block
    _check(args, dtype, sliding_window=window, tile_config=SMALL_TILES,
           kernel_args=dict(args, block_tables=slid_out))


def test_many_query_and_key_tiles(dtype):
    args, _ = _batch([37, 0], [70, 45], num_heads=2, num_kv_heads=1, head_dim=64,
                     block_size=16, dtype=dtype, shared_prefix=0)
    _check(args, dtype, tile_config=SMALL_TILES, fresh=True)


def test_query_and_out_may_be_views(dtype):
    """q split from a fused qkv projection, out a slice after the decode tokens' rows."""
    args, _ = _batch([9, 0], [12, 20], num_heads=4, num_kv_heads=2, head_dim=64, block_size=8,
                     dtype=dtype)
    query = args["query"]
    fused = torch.randn(query.shape[0], 8, 64, dtype=dtype, device=DEVICE)
    fused[:, :4] = query
    q_view = fused[:, :4]
    assert not q_view.is_contiguous()
    buffer = poisoned((query.shape[0] + 3, 4, 64), dtype)
    _check(args, dtype, kernel_args=dict(args, query=q_view), out=buffer[3:])
    assert buffer[:3].isnan().all(), "wrote outside out"


def test_matches_the_engine_torch_path_on_a_mixed_step(dtype):
    """One engine step: two decodes, the first chunk of a long prompt, a later chunk of another,
    a prefix-cache hit. The kernel serves the decodes too, as one-token chunks."""
    num_heads, num_kv_heads, head_dim, block_size = 4, 2, 64, 8
    gen = torch.Generator().manual_seed(7)
    layer = Attention(num_heads, num_kv_heads, head_dim, scale=head_dim ** -0.5)
    cache_shape = (64, num_kv_heads, block_size, head_dim)
    layer.kv_cache = (torch.zeros(cache_shape, dtype=dtype, device=DEVICE),
                      torch.zeros(cache_shape, dtype=dtype, device=DEVICE))
    # (context_len, new tokens); decodes first, as the model runner lays them out.
    steps = [(8, 1), (19, 1), (0, 37), (24, 16), (32, 5)]
    free = torch.randperm(64, generator=gen).tolist()
    tables = [[free.pop() for _ in range(-(-(c + n) // block_size))] for c, n in steps]

    def slots(seq, positions):
        return [tables[seq][p // block_size] * block_size + p % block_size for p in positions]

    def random_kv(count):
        return [torch.randn(count, num_kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
                for _ in range(2)]

    context_slots = [s for seq, (c, _) in enumerate(steps) for s in slots(seq, range(c))]
    cached_k, cached_v = random_kv(len(context_slots))
    cached_index = kv_store_index(torch.tensor(context_slots, device=DEVICE), num_kv_heads,
                                  block_size)
    for cache, values in zip(layer.kv_cache, (cached_k, cached_v)):
        cache.view(-1, head_dim).index_copy_(0, cached_index, values.reshape(-1, head_dim))

    new_slots = [s for seq, (c, n) in enumerate(steps) for s in slots(seq, range(c, c + n))]
    slot_mapping = torch.tensor(new_slots, device=DEVICE)
    num_tokens = len(new_slots)
    width = max(len(t) for t in tables)
    padded = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=DEVICE)
    chunks, start = [], 2
    for seq in range(2, len(steps)):
        context_len, count = steps[seq]
        chunks.append(PrefillChunk(start, count, context_len,
                                   torch.tensor(tables[seq], device=DEVICE)))
        start += count
    meta = AttentionMetadata(
        slot_mapping=slot_mapping,
        kv_store_index=kv_store_index(slot_mapping, num_kv_heads, block_size),
        num_decode_tokens=2, decode_block_tables=padded[:2],
        decode_key_mask=decode_key_mask([c + 1 for c, _ in steps[:2]],
                                        width * block_size).to(DEVICE),
        prefills=chunks)
    q = torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    k, v = random_kv(num_tokens)
    engine_out = layer(q, k, v, meta)  # stores the new K/V, as the kernel expects

    chunk_lens = [n for _, n in steps]
    kernel_out = paged_prefill_attention(
        q, *layer.kv_cache, padded.to(torch.int32),
        torch.tensor([0] + chunk_lens, device=DEVICE).cumsum(0).to(torch.int32),
        torch.tensor([c for c, _ in steps], dtype=torch.int32, device=DEVICE),
        max(chunk_lens), layer.scale)
    assert_close(kernel_out, engine_out, dtype)


def _valid_args():
    args, _ = _batch([3, 0], [5, 4], num_heads=4, num_kv_heads=2, head_dim=64, block_size=8,
                     dtype=torch.float32)
    return args


def _drop(name):
    def edit(args):
        args[name] = args[name][:-1]
    return edit


BAD_INPUTS = {
    "query-2d": ("query", lambda a: a.update(query=a["query"][:, 0])),
    "query-int": ("query", lambda a: a.update(query=a["query"].to(torch.int32))),
    "query-head_dim-strided": ("query", lambda a: a.update(query=a["query"].transpose(1, 2)
                                                           .contiguous().transpose(1, 2))),
    "out-head_dim-strided": ("out", lambda a: a.update(out=torch.empty_like(a["query"])
                                                       .transpose(1, 2).contiguous()
                                                       .transpose(1, 2))),
    "query-head_dim": ("query", lambda a: a.update(
        query=a["query"][..., :60].contiguous(), key_cache=a["key_cache"][..., :60].contiguous(),
        value_cache=a["value_cache"][..., :60].contiguous())),
    "key-dtype": ("key_cache", lambda a: a.update(key_cache=a["key_cache"].half())),
    "key-head_dim": ("key_cache", lambda a: a.update(key_cache=a["key_cache"][..., :32]
                                                     .contiguous())),
    "key-block-size": ("key_cache", lambda a: a.update(
        key_cache=a["key_cache"][:, :, :6].contiguous(),
        value_cache=a["value_cache"][:, :, :6].contiguous())),
    "key-heads": ("key_cache", lambda a: a.update(query=a["query"][:, :3].contiguous())),
    "value-shape": ("value_cache", lambda a: a.update(value_cache=a["value_cache"][1:])),
    "value-strided": ("value_cache", lambda a: a.update(
        value_cache=a["value_cache"].transpose(1, 2).contiguous().transpose(1, 2))),
    "table-int64": ("block_tables", lambda a: a.update(block_tables=a["block_tables"].long())),
    "table-strided": ("block_tables", lambda a: a.update(block_tables=a["block_tables"][:, ::2])),
    "starts-length": ("query_start_loc", _drop("query_start_loc")),
    "starts-int64": ("query_start_loc", lambda a: a.update(
        query_start_loc=a["query_start_loc"].long())),
    "contexts-int64": ("context_lens", lambda a: a.update(context_lens=a["context_lens"].long())),
    "contexts-length": ("context_lens", _drop("context_lens")),
    "max-len-tensor": ("max_query_len", lambda a: a.update(max_query_len=torch.tensor(5))),
    "max-len-too-big": ("max_query_len", lambda a: a.update(max_query_len=100)),
    "window-zero": ("sliding_window", lambda a: a.update(sliding_window=0)),
    "out-dtype": ("out", lambda a: a.update(out=torch.empty_like(a["query"]).half())),
    "out-shape": ("out", lambda a: a.update(out=torch.empty_like(a["query"])[1:])),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_inputs_name_the_argument(case):
    name, edit = BAD_INPUTS[case]
    args = _valid_args()
    edit(args)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        paged_prefill_attention(**args)


def test_empty_batch_returns_at_once():
    args = _valid_args()
    args.update(query=args["query"][:0], max_query_len=0,
                query_start_loc=torch.zeros_like(args["query_start_loc"]))
    assert paged_prefill_attention(**args).shape == (0, 4, 64)


def test_flop_count_counts_only_visible_pairs():
    per_pair = 4 * 2 * 8  # QK^T and PV, a multiply and an add each: heads=2, head_dim=8
    # 4 new tokens after 3 cached see 4, 5, 6, 7 keys.
    assert attention_flops([(3, 4)], num_heads=2, head_dim=8) == 22 * per_pair
    assert attention_flops([(0, 3), (3, 4)], num_heads=2, head_dim=8) == (6 + 22) * per_pair
    # A window of 5 caps those at 4, 5, 5, 5.
    assert attention_flops([(3, 4)], num_heads=2, head_dim=8, sliding_window=5) == 19 * per_pair
    # Causal prefill of n tokens: n (n + 1) / 2 pairs, about half the square.
    assert attention_flops([(0, 8192)], num_heads=1, head_dim=1) == 4 * 8192 * 8193 // 2


if ON_GPU:  # long sequences: only where the kernel is compiled
    @pytest.mark.parametrize("context_len,chunk_len,sliding_window", [
        (4096, 8192, None), (0, 8192, None), (4096, 8192, 4096)])
    @pytest.mark.parametrize("gpu_dtype", [torch.bfloat16, torch.float16])
    def test_long_prefill_on_gpu(context_len, chunk_len, sliding_window, gpu_dtype):
        args, _ = _batch([context_len, 100], [chunk_len, 300], num_heads=8, num_kv_heads=2,
                         head_dim=128, block_size=16, dtype=gpu_dtype, scale=0.5)
        _check(args, gpu_dtype, sliding_window=sliding_window)
