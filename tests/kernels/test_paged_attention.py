"""Paged attention against a naive per-sequence attention in float64, on odd shapes."""
from __future__ import annotations

import pytest
import torch

from infernetes.kernels.paged_attention import (
    decode_key_mask, gather_sequence_kv, kv_store_index, paged_decode_attention,
    prefill_attention, store_kv_cache)

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS = 6, 2, 24, 4, 40


def _naive(q, k, v, positions, scale, window=None):
    """q: [n, H, D]; k, v: [L, Hkv, D]; positions of the queries -> [n, H, D] (float64)."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q.double(), k) * scale
    key_pos = torch.arange(k.shape[0])
    allowed = key_pos[None, :] <= positions[:, None]
    if window is not None:
        allowed &= key_pos[None, :] > positions[:, None] - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hnl,lhd->nhd", scores.softmax(-1), v)


def _fill_cache(seq_lens, dtype, generator):
    """A cache with each sequence in shuffled blocks -> (caches, tables, keys, values)."""
    shape = (NUM_BLOCKS, NUM_KV_HEADS, BLOCK_SIZE, HEAD_DIM)
    key_cache, value_cache = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    free = torch.randperm(NUM_BLOCKS, generator=generator).tolist()
    tables, keys, values = [], [], []
    for length in seq_lens:
        table = [free.pop() for _ in range(-(-length // BLOCK_SIZE))]
        k = torch.randn(length, NUM_KV_HEADS, HEAD_DIM, generator=generator).to(dtype)
        v = torch.randn(length, NUM_KV_HEADS, HEAD_DIM, generator=generator).to(dtype)
        slots = torch.tensor([table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
                              for p in range(length)])
        store_kv_cache(k, v, key_cache, value_cache,
                       kv_store_index(slots, NUM_KV_HEADS, BLOCK_SIZE))
        tables.append(table), keys.append(k), values.append(v)
    return key_cache, value_cache, tables, keys, values


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("batch", [1, 5])
def test_decode_matches_naive(dtype, tol, window, batch):
    gen = torch.Generator().manual_seed(0)
    seq_lens = [1, 7, 13, 4, 22] if batch > 1 else [11]
    key_cache, value_cache, tables, keys, values = _fill_cache(seq_lens, dtype, gen)
    width = max(len(t) for t in tables)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    query = torch.randn(len(seq_lens), NUM_HEADS, HEAD_DIM, generator=gen).to(dtype)
    mask = decode_key_mask(seq_lens, width * BLOCK_SIZE, window)
    out = paged_decode_attention(query, key_cache, value_cache, block_tables, mask, 0.2)
    assert out.dtype == dtype and out.shape == query.shape
    for i, length in enumerate(seq_lens):
        ref = _naive(query[i:i + 1], keys[i], values[i], torch.tensor([length - 1]), 0.2, window)
        torch.testing.assert_close(out[i:i + 1].double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("context_len,num_new", [(0, 9), (5, 1), (8, 7), (11, 6)])
@pytest.mark.parametrize("window", [None, 6])
def test_prefill_over_a_cached_prefix_matches_naive(context_len, num_new, window):
    gen = torch.Generator().manual_seed(1)
    total = context_len + num_new
    key_cache, value_cache, tables, keys, values = _fill_cache([total], torch.float32, gen)
    table = torch.tensor(tables[0])
    k = gather_sequence_kv(key_cache, table, total)
    v = gather_sequence_kv(value_cache, table, total)
    torch.testing.assert_close(k, keys[0].transpose(0, 1))
    query = torch.randn(num_new, NUM_HEADS, HEAD_DIM, generator=gen)
    out = prefill_attention(query, k, v, context_len, 0.3, window)
    ref = _naive(query, keys[0], values[0], torch.arange(context_len, total), 0.3, window)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
