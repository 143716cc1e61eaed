"""KVCacheManager: block tables rounded to whole blocks, all-or-nothing allocation, and the
prefix cache as a request sees it (hits, the recomputed last token, LoRA, statistics)."""
from __future__ import annotations

import pytest

from infernetes.runtime.engine.kv_cache_manager import KVCacheManager
from scheduler_utils import make_request

BS = 4  # block size of every manager here


def admit(kv: KVCacheManager, request, num_new_tokens: int | None = None) -> int:
    """Do what the scheduler does for a waiting request: look up its prefix, allocate, and mark
    the tokens computed. Returns the number of prefix-hit tokens."""
    blocks, num_cached = kv.get_computed_blocks(request)
    kv.record_prefix_lookup(request.num_tokens, num_cached)
    if num_new_tokens is None:
        num_new_tokens = request.num_tokens - num_cached
    assert kv.allocate_slots(request, num_new_tokens, blocks) is not None
    request.num_computed_tokens = num_cached + num_new_tokens
    return num_cached


def snapshot(kv: KVCacheManager):
    return (kv.num_free_blocks, {rid: kv.block_ids(rid) for rid in kv.req_to_blocks},
            [b.ref_cnt for b in kv.pool.blocks])


# -- allocation --------------------------------------------------------------------------------

@pytest.mark.parametrize("num_tokens, num_blocks", [(1, 1), (4, 1), (5, 2), (8, 2), (10, 3)])
def test_allocation_rounds_up_to_whole_blocks(num_tokens, num_blocks):
    kv = KVCacheManager(8, BS)
    request = make_request("a", num_tokens)
    new_blocks = kv.allocate_slots(request, num_tokens)
    assert len(new_blocks) == num_blocks
    assert kv.block_ids("a") == [b.block_id for b in new_blocks]
    assert kv.num_free_blocks == 8 - num_blocks


def test_growing_request_gets_a_new_block_only_when_its_last_one_is_full():
    kv = KVCacheManager(8, BS)
    request = make_request("a", 6)
    admit(kv, request)
    assert len(kv.block_ids("a")) == 2

    # Decode steps: one sampled token each; tokens 7 and 8 fit the second block.
    for expected_blocks in (2, 2, 3, 3, 3, 3, 4):
        request.output_token_ids.append(100 + request.num_output_tokens)
        assert kv.allocate_slots(request, 1) is not None
        request.num_computed_tokens += 1
        assert len(kv.block_ids("a")) == expected_blocks
    assert kv.num_free_blocks == 8 - 4


def test_allocation_returns_none_and_changes_nothing_when_memory_is_short():
    kv = KVCacheManager(4, BS)
    holder = make_request("holder", 12)
    admit(kv, holder)
    before = snapshot(kv)

    newcomer = make_request("newcomer", 8)
    assert kv.allocate_slots(newcomer, 8) is None
    assert snapshot(kv) == before
    assert kv.block_ids("newcomer") == []

    # A running request that cannot grow keeps the blocks it had.
    holder.output_token_ids.extend([1, 2, 3, 4, 5])
    assert kv.allocate_slots(holder, 5) is None
    assert snapshot(kv) == before

    # What does fit still succeeds.
    assert kv.allocate_slots(newcomer, 4) is not None
    assert kv.num_free_blocks == 0


def test_failed_allocation_does_not_take_prefix_hits_off_the_free_queue():
    kv = KVCacheManager(4, BS)
    first = make_request("first", list(range(1, 10)))  # two full blocks and one token
    admit(kv, first)
    kv.free(first)
    other = make_request("other", 4)
    admit(kv, other)  # takes a never-used block; the cached ones stay free
    before = snapshot(kv)

    second = make_request("second", list(range(1, 9)) + list(range(50, 62)))  # 20 tokens
    blocks, num_cached = kv.get_computed_blocks(second)
    assert num_cached == 8
    assert kv.allocate_slots(second, 12, blocks) is None  # needs 3 more blocks, 1 is free
    assert snapshot(kv) == before
    assert all(b.ref_cnt == 0 for b in blocks)


def test_free_returns_every_block():
    kv = KVCacheManager(8, BS)
    a, b = make_request("a", 10), make_request("b", [50, 51, 52, 53, 54])
    admit(kv, a)
    admit(kv, b)
    assert kv.num_free_blocks == 3
    assert kv.usage() == pytest.approx(5 / 8)

    kv.free(a)
    assert kv.block_ids("a") == []
    assert kv.num_free_blocks == 6
    kv.free(b)
    assert kv.num_free_blocks == 8
    assert kv.usage() == 0.0
    assert all(block.ref_cnt == 0 for block in kv.pool.blocks)

    kv.free(b)  # freeing twice, or a request that never had blocks, is harmless
    kv.free(make_request("never", 3))
    assert kv.num_free_blocks == 8
    assert all(block.ref_cnt == 0 for block in kv.pool.blocks)


# -- prefix cache ------------------------------------------------------------------------------

def test_second_request_hits_the_shared_prompt_prefix():
    kv = KVCacheManager(16, BS)
    first = make_request("first", list(range(1, 11)))  # 10 tokens: 2 full blocks
    assert admit(kv, first) == 0

    second = make_request("second", list(range(1, 9)) + [77, 78, 79])
    blocks, num_cached = kv.get_computed_blocks(second)
    assert num_cached == 8
    assert [b.block_id for b in blocks] == kv.block_ids("first")[:2]

    new_blocks = kv.allocate_slots(second, 3, blocks)
    assert len(new_blocks) == 1  # tokens 8..10 need one block of their own
    assert kv.block_ids("second")[:2] == kv.block_ids("first")[:2]
    assert all(b.ref_cnt == 2 for b in blocks)
    assert kv.num_free_blocks == 16 - 3 - 1


def test_prefix_hit_stops_at_the_first_different_block():
    kv = KVCacheManager(16, BS)
    admit(kv, make_request("first", list(range(1, 14))))
    diverging = list(range(1, 5)) + [99] + list(range(6, 14))  # differs in the second block
    assert kv.get_computed_blocks(make_request("second", diverging))[1] == 4
    assert kv.get_computed_blocks(make_request("third", [99] + list(range(2, 14))))[1] == 0


@pytest.mark.parametrize("prompt_len", [1, 3, 4, 5, 8, 9, 12, 13])
def test_identical_prompt_always_recomputes_its_last_token(prompt_len):
    kv = KVCacheManager(16, BS)
    admit(kv, make_request("first", prompt_len))
    _, num_cached = kv.get_computed_blocks(make_request("second", prompt_len))
    assert num_cached % BS == 0
    assert num_cached < prompt_len
    assert num_cached == (prompt_len - 1) // BS * BS


def test_hits_survive_the_first_request_finishing():
    kv = KVCacheManager(8, BS)
    first = make_request("first", 9)
    admit(kv, first)
    kv.free(first)
    assert kv.num_free_blocks == 8

    second = make_request("second", 11)
    assert admit(kv, second) == 8
    assert kv.num_free_blocks == 8 - 3


def test_a_chunk_caches_its_full_blocks_as_soon_as_it_is_scheduled():
    kv = KVCacheManager(16, BS)
    first = make_request("first", 12)
    admit(kv, first, num_new_tokens=6)  # chunked prefill: tokens 0..5 only
    second = make_request("second", 12)
    assert kv.get_computed_blocks(second)[1] == 4

    assert kv.allocate_slots(first, 6) is not None  # the rest of the prompt
    first.num_computed_tokens = 12
    assert kv.get_computed_blocks(second)[1] == 8


def test_generated_tokens_are_cached_too():
    kv = KVCacheManager(16, BS)
    first = make_request("first", [1, 2, 3, 4, 5, 6])
    admit(kv, first)
    for token in (7, 8, 9):  # decode: the sampled tokens fill the second block
        first.output_token_ids.append(token)
        assert kv.allocate_slots(first, 1) is not None
        first.num_computed_tokens += 1
    # A follow-up turn whose prompt is the whole conversation so far.
    follow_up = make_request("follow_up", list(range(1, 10)) + [20, 21])
    assert kv.get_computed_blocks(follow_up)[1] == 8


def test_tail_blocks_are_evicted_before_the_shared_head():
    kv = KVCacheManager(3, BS)
    first = make_request("first", 12)
    admit(kv, first)
    kv.free(first)

    admit(kv, make_request("unrelated", [50, 51, 52, 53]))  # needs one block: evicts one

    longer = make_request("longer", 13)  # first's prompt and one more token
    assert kv.get_computed_blocks(longer)[1] == 8


def test_lora_id_separates_the_caches():
    kv = KVCacheManager(16, BS)
    admit(kv, make_request("base", 9))
    admit(kv, make_request("lora1", 9, lora_id=1))

    assert kv.get_computed_blocks(make_request("base2", 9))[1] == 8
    assert kv.get_computed_blocks(make_request("lora1b", 9, lora_id=1))[1] == 8
    assert kv.get_computed_blocks(make_request("lora2", 9, lora_id=2))[1] == 0

    base_blocks = kv.get_computed_blocks(make_request("x", 9))[0]
    lora_blocks = kv.get_computed_blocks(make_request("y", 9, lora_id=1))[0]
    assert not {b.block_id for b in base_blocks} & {b.block_id for b in lora_blocks}


def test_prefix_cache_stats_count_prompt_tokens_and_hits():
    kv = KVCacheManager(16, BS)
    admit(kv, make_request("a", 10))
    admit(kv, make_request("b", list(range(1, 9)) + [40, 41, 42, 43]))
    assert kv.prefix_cache_stats.queries == 10 + 12
    assert kv.prefix_cache_stats.hits == 0 + 8

    # A lookup alone (a request held back, or recomputed after preemption) is not counted.
    assert kv.get_computed_blocks(make_request("c", 10))[1] == 8
    assert kv.prefix_cache_stats.queries == 22
    assert kv.prefix_cache_stats.hits == 8


def test_caching_disabled_never_hits():
    kv = KVCacheManager(16, BS, enable_caching=False)
    first = make_request("first", 9)
    assert admit(kv, first) == 0
    kv.free(first)
    assert kv.get_computed_blocks(make_request("second", 9)) == ([], 0)
    assert kv.prefix_cache_stats.queries == 0
    assert kv.prefix_cache_stats.hits == 0
    assert all(b.block_hash is None for b in kv.pool.blocks)
