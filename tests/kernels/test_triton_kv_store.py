"""The Triton KV-cache store: exactly the mapped slots change, padding slots (< 0) are skipped."""
from __future__ import annotations

import pytest
import torch

from kernel_testing import DEVICE
from infernetes.kernels.triton.kv_store import reference_store_kv_cache, store_kv_cache

BLOCK_SIZE, NUM_BLOCKS = 16, 24
SENTINEL = 1234.0  # exact in every cache dtype


def _slots(num_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """Distinct slots in shuffled blocks, every third block a hole never written, every fifth
    token padding (-1)."""
    blocks = [b for b in torch.randperm(NUM_BLOCKS, generator=generator).tolist() if b % 3]
    rows = torch.randperm(len(blocks) * BLOCK_SIZE, generator=generator)[:num_tokens]
    slots = torch.tensor(blocks)[rows // BLOCK_SIZE] * BLOCK_SIZE + rows % BLOCK_SIZE
    slots[::5] = -1
    return slots.to(DEVICE)


def _caches(num_kv_heads: int, head_dim: int, dtype: torch.dtype):
    shape = (NUM_BLOCKS, num_kv_heads, BLOCK_SIZE, head_dim)
    return (torch.full(shape, SENTINEL, dtype=dtype, device=DEVICE),
            torch.full(shape, SENTINEL, dtype=dtype, device=DEVICE))


def _written_rows(slots: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[NUM_BLOCKS, num_kv_heads, BLOCK_SIZE] bool: the cache rows the slots address."""
    written = torch.zeros(NUM_BLOCKS * BLOCK_SIZE, dtype=torch.bool, device=DEVICE)
    written[slots[slots >= 0]] = True
    return written.view(NUM_BLOCKS, 1, BLOCK_SIZE).expand(-1, num_kv_heads, -1)


@pytest.mark.parametrize("num_tokens,num_kv_heads,head_dim", [
    (1, 8, 128), (7, 2, 80), (33, 1, 64), (33, 4, 256), (129, 8, 128)])
def test_store_writes_exactly_the_mapped_slots(num_tokens, num_kv_heads, head_dim, dtype):
    gen = torch.Generator().manual_seed(num_tokens * head_dim)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    slots = _slots(num_tokens, gen)
    key_cache, value_cache = _caches(num_kv_heads, head_dim, dtype)
    expected_key_cache, expected_value_cache = _caches(num_kv_heads, head_dim, dtype)

    store_kv_cache(key, value, key_cache, value_cache, slots)
    reference_store_kv_cache(key, value, expected_key_cache, expected_value_cache, slots)

    assert torch.equal(key_cache, expected_key_cache)
    assert torch.equal(value_cache, expected_value_cache)
    written = _written_rows(slots, num_kv_heads)
    for cache in (key_cache, value_cache):  # holes, padding and unused rows kept the sentinel
        assert (cache[~written] == SENTINEL).all()
        assert (cache[written] != SENTINEL).all()


def test_store_casts_to_cache_dtype_from_strided_views():
    """key and value as the engine passes them: views into a fused QKV projection."""
    gen = torch.Generator().manual_seed(1)
    num_tokens, num_heads, num_kv_heads, head_dim = 7, 4, 2, 96
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen)
    qkv = qkv.to(DEVICE)
    kv = qkv[:, num_heads * head_dim:].view(num_tokens, 2 * num_kv_heads, head_dim)
    key, value = kv[:, :num_kv_heads], kv[:, num_kv_heads:]
    slots = _slots(num_tokens, gen)
    key_cache, value_cache = _caches(num_kv_heads, head_dim, torch.float16)
    expected_key_cache, expected_value_cache = _caches(num_kv_heads, head_dim, torch.float16)

    store_kv_cache(key, value, key_cache, value_cache, slots)
    reference_store_kv_cache(key, value, expected_key_cache, expected_value_cache, slots)

    assert torch.equal(key_cache, expected_key_cache)
    assert torch.equal(value_cache, expected_value_cache)


def test_all_padding_and_empty_batches_leave_the_cache_untouched():
    key_cache, value_cache = _caches(2, 64, torch.float32)
    key = torch.randn(5, 2, 64, device=DEVICE)
    store_kv_cache(key, key, key_cache, value_cache,
                   torch.full((5,), -1, dtype=torch.int64, device=DEVICE))
    empty = key[:0]
    store_kv_cache(empty, empty, key_cache, value_cache,
                   torch.empty(0, dtype=torch.int64, device=DEVICE))
    assert (key_cache == SENTINEL).all() and (value_cache == SENTINEL).all()


def _good_inputs():
    key = torch.randn(3, 2, 64, device=DEVICE)
    caches = _caches(2, 64, torch.float32)
    return dict(key=key, value=key.clone(), key_cache=caches[0], value_cache=caches[1],
                slot_mapping=torch.arange(3, device=DEVICE))


@pytest.mark.parametrize("name,bad", [
    ("key", lambda a: a["key"][0]),
    ("value", lambda a: a["value"][:, :1]),
    ("key_cache", lambda a: a["key_cache"][:, :1]),
    ("key_cache", lambda a: a["key_cache"][..., :32]),
    ("value_cache", lambda a: a["value_cache"][:-1]),
    ("slot_mapping", lambda a: a["slot_mapping"].int()),
    ("slot_mapping", lambda a: a["slot_mapping"][:2]),
    ("key", lambda a: a["key"].int()),
    ("value", lambda a: a["value"].transpose(1, 2).contiguous().transpose(1, 2)),
])
def test_bad_inputs_raise_naming_the_argument(name, bad):
    args = _good_inputs()
    args[name] = bad(args)
    with pytest.raises(ValueError, match=f"^{name}:"):
        store_kv_cache(**args)
