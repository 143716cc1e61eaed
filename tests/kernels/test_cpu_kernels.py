"""The C kernels for CPUs (kernels/cpu) that the layers call one at a time, against the torch
paths they replace, on odd shapes, in float32, bfloat16 and float16; and their argument checks.
The fused decoder layer's cores (norm, rotary, SiLU) are compared with the torch layers in
tests/runtime/test_cpu_kernel_backend.py and, in float32, with transformers in
test_correctness.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infernetes.kernels.cpu import library
from infernetes.kernels.cpu.decode_attention import paged_decode_attention
from infernetes.kernels.cpu.kv_store import store_kv_cache
from infernetes.kernels.cpu.linear import linear
from infernetes.kernels.paged_attention import (
    decode_key_mask, kv_store_index, paged_decode_attention as torch_decode_attention,
    store_kv_cache as torch_store_kv_cache)
from infernetes.runtime.gguf_convert import cache_root

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (atol, rtol) for outputs of magnitude ~1: an ulp or two of the dtype
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 1.6e-2),
             torch.float16: (2e-3, 2e-3)}


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels():
    """Built (or found in the cache) once; a failure here fails every test, never skips."""
    lib = library.load(cache_root() / "kernels")
    assert library.simd_width() in (1, 8)
    return lib


def _close(actual, expected, dtype, scale=1.0):
    atol, rtol = TOLERANCE[dtype]
    assert actual.dtype == dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol * scale,
                               rtol=rtol * scale)


def _randn(*shape, dtype, generator, scale=1.0):
    return (torch.randn(*shape, generator=generator) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 7, 5), (2, 33, 17), (3, 40, 64),
                                   (4, 9, 100), (5, 64, 33), (9, 5, 8)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_float64(dtype, m, n, k, with_bias):
    gen = torch.Generator().manual_seed(m * 100 + n + k)
    # x as a strided view (rows of a wider matrix), as the layers pass slices
    x = _randn(m, k + 3, dtype=dtype, generator=gen)[:, 2:k + 2]
    weight = _randn(n, k, dtype=dtype, generator=gen, scale=k ** -0.5)
    bias = _randn(n, dtype=dtype, generator=gen) if with_bias else None
    out = linear(x, weight, bias)
    expected = x.double() @ weight.double().T + (0 if bias is None else bias.double())
    _close(out, expected.to(dtype), dtype)
    _close(out, F.linear(x, weight, bias), dtype, scale=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(12, 16, 8), (13, 33, 257), (37, 5, 600), (200, 47, 300),
                                   (97, 1001, 40)])
def test_gemm_rows_match_float64(dtype, m, n, k):
    """From 12 rows on the product is the packed GEMM (csrc/gemm.c): whole and partial panels
    of 16 weight rows, column blocks of 256 and a ragged last one, 6-row blocks and a ragged
    last one, more rows than one chunk of 96, both threads."""
    gen = torch.Generator().manual_seed(m * 100 + n + k)
    x = _randn(m, k + 3, dtype=dtype, generator=gen)[:, 1:k + 1]
    weight = _randn(n, k, dtype=dtype, generator=gen, scale=k ** -0.5)
    bias = _randn(n, dtype=dtype, generator=gen)
    out = linear(x, weight, bias)
    expected = x.double() @ weight.double().T + bias.double()
    _close(out, expected.to(dtype), dtype)
    logits = linear(x, weight, bias, out_dtype=torch.float32)
    assert torch.equal(logits, out.float())


@pytest.mark.parametrize("m", [3, 20])
def test_linear_over_no_columns_is_the_bias(m):
    """k = 0 on the row path and the GEMM: nothing to sum, every row of y is the bias."""
    bias = torch.arange(5.0)
    assert torch.equal(linear(torch.zeros(m, 0), torch.zeros(5, 0), bias), bias.expand(m, 5))


def test_linear_writes_float32_logits_with_the_same_values():
    gen = torch.Generator().manual_seed(2)
    x = _randn(3, 40, dtype=torch.bfloat16, generator=gen)
    weight = _randn(97, 40, dtype=torch.bfloat16, generator=gen)
    logits = linear(x, weight, out_dtype=torch.float32)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, linear(x, weight).float())
    with pytest.raises(ValueError, match="out_dtype"):
        linear(x, weight, out_dtype=torch.float16)


def test_linear_streams_a_large_matrix_on_every_thread():
    """Wide enough that the rows split over threads; every output row written."""
    gen = torch.Generator().manual_seed(1)
    x = _randn(2, 300, dtype=torch.bfloat16, generator=gen)
    weight = _randn(1001, 300, dtype=torch.bfloat16, generator=gen, scale=300 ** -0.5)
    expected = (x.double() @ weight.double().T).to(torch.bfloat16)
    _close(linear(x, weight), expected, torch.bfloat16)


NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS = 6, 2, 24, 4, 40


@pytest.mark.parametrize("dtype", DTYPES)
def test_kv_store_equals_the_torch_store(dtype):
    gen = torch.Generator().manual_seed(3)
    shape = (NUM_BLOCKS, NUM_KV_HEADS, BLOCK_SIZE, HEAD_DIM)
    caches = [torch.zeros(shape, dtype=dtype) for _ in range(4)]
    slots = torch.randperm(NUM_BLOCKS * BLOCK_SIZE, generator=gen)[:11]
    qkv = _randn(11, 3 * NUM_KV_HEADS * HEAD_DIM, dtype=dtype, generator=gen)
    key = qkv[:, NUM_KV_HEADS * HEAD_DIM:2 * NUM_KV_HEADS * HEAD_DIM].view(11, NUM_KV_HEADS, -1)
    value = qkv[:, 2 * NUM_KV_HEADS * HEAD_DIM:].view(11, NUM_KV_HEADS, -1)
    store_kv_cache(key, value, caches[0], caches[1], slots)
    torch_store_kv_cache(key, value, caches[2], caches[3],
                         kv_store_index(slots, NUM_KV_HEADS, BLOCK_SIZE))
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    # a negative slot (padding) writes nothing
    store_kv_cache(key[:1] + 1, value[:1] + 1, caches[0], caches[1], torch.tensor([-1]))
    assert torch.equal(caches[0], caches[2])


def _filled_cache(seq_lens, dtype, generator, head_dim=HEAD_DIM):
    shape = (NUM_BLOCKS, NUM_KV_HEADS, BLOCK_SIZE, head_dim)
    key_cache, value_cache = _randn(*shape, dtype=dtype, generator=generator), \
        _randn(*shape, dtype=dtype, generator=generator)
    free = torch.randperm(NUM_BLOCKS, generator=generator).tolist()
    tables = [[free.pop() for _ in range(-(-n // BLOCK_SIZE))] for n in seq_lens]
    width = max(len(t) for t in tables)
    return key_cache, value_cache, torch.tensor([t + [0] * (width - len(t)) for t in tables])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("seq_lens", [[11], [1, 7, 13, 4, 22]])
@pytest.mark.parametrize("head_dim", [HEAD_DIM, 6])  # SIMD (a multiple of 8), and not
def test_decode_attention_matches_the_torch_path(dtype, window, seq_lens, head_dim):
    gen = torch.Generator().manual_seed(len(seq_lens))
    key_cache, value_cache, tables = _filled_cache(seq_lens, dtype, gen, head_dim)
    # queries as a slice of a projection row: strided over tokens
    qkv = _randn(len(seq_lens), (NUM_HEADS + 4) * head_dim, dtype=dtype, generator=gen)
    query = qkv[:, :NUM_HEADS * head_dim].view(len(seq_lens), NUM_HEADS, head_dim)
    out = paged_decode_attention(query, key_cache, value_cache, tables,
                                 torch.tensor(seq_lens), 0.2, window)
    mask = decode_key_mask(seq_lens, tables.shape[1] * BLOCK_SIZE, window)
    expected = torch_decode_attention(query.contiguous(), key_cache, value_cache, tables, mask,
                                      0.2)
    _close(out, expected, dtype)


def test_decode_attention_over_long_contexts_in_parallel():
    """More tasks than threads, long sequences: every (sequence, KV head) written."""
    gen = torch.Generator().manual_seed(5)
    seq_lens = [150, 3, 160, 77]
    shape = (200, NUM_KV_HEADS, BLOCK_SIZE, HEAD_DIM)
    key_cache, value_cache = _randn(*shape, dtype=torch.float32, generator=gen), \
        _randn(*shape, dtype=torch.float32, generator=gen)
    tables = torch.randperm(200, generator=gen)[:4 * 40].view(4, 40)
    query = _randn(4, NUM_HEADS, HEAD_DIM, dtype=torch.float32, generator=gen)
    out = paged_decode_attention(query, key_cache, value_cache, tables, torch.tensor(seq_lens),
                                 HEAD_DIM ** -0.5)
    mask = decode_key_mask(seq_lens, 40 * BLOCK_SIZE)
    expected = torch_decode_attention(query, key_cache, value_cache, tables, mask,
                                      HEAD_DIM ** -0.5)
    _close(out, expected, torch.float32)


def test_bad_arguments_are_named():
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        linear(x.double(), torch.zeros(3, 8).double())
    with pytest.raises(ValueError, match="weight: expected a contiguous"):
        linear(x, torch.zeros(8, 3).T)
    with pytest.raises(ValueError, match="weight: .* differs from x's"):
        linear(x, torch.zeros(3, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="x: the last dimension must have unit stride"):
        linear(torch.zeros(8, 2).T, torch.zeros(3, 8))
    with pytest.raises(ValueError, match="bias"):
        linear(x, torch.zeros(3, 8), torch.zeros(4))
    cache = torch.zeros(4, 2, 4, 8)
    with pytest.raises(ValueError, match="slot_mapping"):
        store_kv_cache(torch.zeros(3, 2, 8), torch.zeros(3, 2, 8), cache, cache.clone(),
                       torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="group onto"):
        paged_decode_attention(torch.zeros(1, 3, 8), cache, cache.clone(),
                               torch.zeros(1, 1, dtype=torch.int64),
                               torch.ones(1, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match="seq_lens"):
        paged_decode_attention(torch.zeros(1, 4, 8), cache, cache.clone(),
                               torch.zeros(1, 1, dtype=torch.int64),
                               torch.ones(1, dtype=torch.int32), 1.0)
