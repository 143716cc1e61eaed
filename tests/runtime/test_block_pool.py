"""BlockPool: reference counts, the free queue's order, and the prefix cache over free blocks."""
from __future__ import annotations

import pytest

from infernetes.runtime.engine.block_pool import BlockPool, hash_block_tokens


def ids(blocks) -> list[int]:
    return [b.block_id for b in blocks]


def h(*tokens: int, parent=None, extra_key: int = 0):
    return hash_block_tokens(parent, list(tokens), extra_key)


def cached_free_pool(num_blocks: int, free_order: list[int]) -> tuple[BlockPool, list]:
    """A pool whose every block is cached under hash h(block_id) and freed in `free_order`."""
    pool = BlockPool(num_blocks)
    blocks = pool.get_new_blocks(num_blocks)
    for block in blocks:
        pool.cache_full_block(block, h(block.block_id))
    pool.free_blocks(blocks[i] for i in free_order)
    return pool, blocks


# -- allocation and reference counts ---------------------------------------------------------

def test_new_pool_is_all_free():
    pool = BlockPool(4)
    assert pool.num_free_blocks == 4
    assert pool.usage() == 0.0
    assert all(b.ref_cnt == 0 and b.block_hash is None for b in pool.blocks)


def test_pool_needs_a_block():
    with pytest.raises(ValueError):
        BlockPool(0)


def test_get_new_blocks_hands_out_blocks_in_id_order_with_one_reference():
    pool = BlockPool(5)
    first = pool.get_new_blocks(2)
    second = pool.get_new_blocks(2)
    assert ids(first) == [0, 1]
    assert ids(second) == [2, 3]
    assert all(b.ref_cnt == 1 for b in first + second)
    assert pool.num_free_blocks == 1
    assert pool.usage() == pytest.approx(0.8)
    assert pool.get_new_blocks(0) == []


def test_get_new_blocks_raises_when_short_and_changes_nothing():
    pool = BlockPool(3)
    pool.get_new_blocks(1)
    with pytest.raises(ValueError):
        pool.get_new_blocks(3)
    assert pool.num_free_blocks == 2
    assert ids(pool.get_new_blocks(2)) == [1, 2]
    with pytest.raises(ValueError):
        pool.get_new_blocks(1)


def test_block_is_free_only_when_its_last_reference_is_dropped():
    pool = BlockPool(2)
    [block] = pool.get_new_blocks(1)
    pool.touch([block])  # a second request shares it
    assert block.ref_cnt == 2
    assert pool.num_free_blocks == 1

    pool.free_blocks([block])
    assert block.ref_cnt == 1
    assert pool.num_free_blocks == 1

    pool.free_blocks([block])
    assert block.ref_cnt == 0
    assert pool.num_free_blocks == 2
    assert pool.usage() == 0.0


def test_freed_blocks_are_reused_in_the_order_they_were_freed():
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(4)
    pool.free_blocks([blocks[2], blocks[0]])
    pool.free_blocks([blocks[3], blocks[1]])
    assert ids(pool.get_new_blocks(4)) == [2, 0, 3, 1]


# -- the prefix cache --------------------------------------------------------------------------

def test_cached_block_stays_findable_after_it_is_freed():
    pool = BlockPool(2)
    [block] = pool.get_new_blocks(1)
    pool.cache_full_block(block, h(1, 2))
    pool.free_blocks([block])
    assert pool.get_cached_block(h(1, 2)) is block
    assert block.block_hash == h(1, 2)
    assert pool.get_cached_block(h(3, 4)) is None


def test_reusing_a_cached_free_block_evicts_it():
    pool = BlockPool(1)
    [block] = pool.get_new_blocks(1)
    pool.cache_full_block(block, h(1, 2))
    pool.free_blocks([block])

    [again] = pool.get_new_blocks(1)
    assert again is block
    assert block.block_hash is None
    assert pool.get_cached_block(h(1, 2)) is None


def test_eviction_follows_lru_order_of_cached_free_blocks():
    pool, blocks = cached_free_pool(3, free_order=[1, 2, 0])

    assert ids(pool.get_new_blocks(1)) == [1]
    assert pool.get_cached_block(h(1)) is None
    assert pool.get_cached_block(h(2)) is blocks[2]
    assert pool.get_cached_block(h(0)) is blocks[0]

    assert ids(pool.get_new_blocks(1)) == [2]
    assert pool.get_cached_block(h(2)) is None
    assert pool.get_cached_block(h(0)) is blocks[0]


def test_never_used_blocks_go_before_cached_ones():
    pool = BlockPool(3)
    [block] = pool.get_new_blocks(1)
    pool.cache_full_block(block, h(5))
    pool.free_blocks([block])
    assert ids(pool.get_new_blocks(2)) == [1, 2]
    assert pool.get_cached_block(h(5)) is block


def test_touch_takes_a_cached_free_block_off_the_free_queue():
    pool, blocks = cached_free_pool(3, free_order=[0, 1, 2])
    pool.touch([blocks[0]])
    assert blocks[0].ref_cnt == 1
    assert pool.num_free_blocks == 2

    # Everything still free is handed out, but never the touched block, which stays cached.
    assert ids(pool.get_new_blocks(2)) == [1, 2]
    with pytest.raises(ValueError):
        pool.get_new_blocks(1)
    assert pool.get_cached_block(h(0)) is blocks[0]

    pool.free_blocks([blocks[0]])
    assert pool.num_free_blocks == 1
    assert pool.get_cached_block(h(0)) is blocks[0]


def test_touch_then_free_moves_a_block_to_the_back_of_the_queue():
    pool, blocks = cached_free_pool(3, free_order=[0, 1, 2])
    pool.touch([blocks[0]])
    pool.free_blocks([blocks[0]])  # recently used again: evicted last
    assert ids(pool.get_new_blocks(3)) == [1, 2, 0]


def test_freeing_tail_blocks_first_evicts_the_tail_of_a_prefix_first():
    pool = BlockPool(3)
    chain = pool.get_new_blocks(3)
    hashes = []
    parent = None
    for i, block in enumerate(chain):
        parent = h(i, i, parent=parent)
        hashes.append(parent)
        pool.cache_full_block(block, parent)
    pool.free_blocks(reversed(chain))

    [victim] = pool.get_new_blocks(1)
    assert victim is chain[2]
    assert pool.get_cached_block(hashes[2]) is None
    # The head of the prefix, the part other prompts are most likely to share, survives.
    assert pool.get_cached_block(hashes[0]) is chain[0]
    assert pool.get_cached_block(hashes[1]) is chain[1]


def test_first_block_cached_under_a_hash_stays_findable():
    pool = BlockPool(3)
    first, second = pool.get_new_blocks(2)
    pool.cache_full_block(first, h(9))
    pool.cache_full_block(second, h(9))
    assert pool.get_cached_block(h(9)) is first

    # Reusing the duplicate does not drop the original from the cache.
    pool.free_blocks([second])
    pool.get_new_blocks(2)  # the never-used block 2, then the duplicate
    assert second.block_hash is None
    assert pool.get_cached_block(h(9)) is first


def test_a_block_keeps_its_first_hash():
    pool = BlockPool(1)
    [block] = pool.get_new_blocks(1)
    pool.cache_full_block(block, h(1))
    pool.cache_full_block(block, h(2))
    assert block.block_hash == h(1)
    assert pool.get_cached_block(h(2)) is None


def test_caching_disabled_caches_nothing():
    pool = BlockPool(2, enable_caching=False)
    [block] = pool.get_new_blocks(1)
    pool.cache_full_block(block, h(1))
    assert block.block_hash is None
    assert pool.get_cached_block(h(1)) is None


def test_reset_prefix_cache_refuses_while_a_block_is_held():
    pool = BlockPool(2)
    a, b = pool.get_new_blocks(2)
    pool.cache_full_block(a, h(1))
    pool.cache_full_block(b, h(2))
    pool.free_blocks([a])

    assert pool.reset_prefix_cache() is False
    assert pool.get_cached_block(h(1)) is a
    assert pool.get_cached_block(h(2)) is b


def test_reset_prefix_cache_forgets_every_hash_once_all_blocks_are_free():
    pool, blocks = cached_free_pool(3, free_order=[0, 1, 2])
    assert pool.reset_prefix_cache() is True
    assert all(pool.get_cached_block(h(i)) is None for i in range(3))
    assert all(b.block_hash is None for b in blocks)
    assert pool.num_free_blocks == 3


# -- chained block hashes ----------------------------------------------------------------------

def test_hash_is_deterministic_for_equal_inputs():
    parent = h(1, 2, 3, 4)
    assert h(5, 6, parent=parent, extra_key=3) == h(5, 6, parent=h(1, 2, 3, 4), extra_key=3)
    assert isinstance(parent, bytes) and len(parent) == 16


def test_hash_depends_on_the_tokens_and_their_order():
    assert h(1, 2, 3, 4) != h(1, 2, 3, 5)
    assert h(1, 2, 3, 4) != h(4, 3, 2, 1)


def test_hash_depends_on_the_parent():
    tokens = (5, 6, 7, 8)
    with_parent = h(*tokens, parent=h(1, 2, 3, 4))
    assert with_parent != h(*tokens)
    assert with_parent != h(*tokens, parent=h(1, 2, 3, 9))


def test_hash_depends_on_the_extra_key():
    assert h(1, 2, 3, 4, extra_key=1) != h(1, 2, 3, 4)
    assert h(1, 2, 3, 4, extra_key=1) != h(1, 2, 3, 4, extra_key=2)
    # The key also changes every later block of the chain.
    assert h(5, parent=h(1, extra_key=1), extra_key=0) != h(5, parent=h(1, extra_key=0))
