"""Fixed-size KV-cache blocks: reference counts, a free queue, and the prefix cache.

Invariants:
- A block is in the free queue iff its `ref_cnt` is 0. The queue is in eviction order: blocks
  freed earlier, and the tail blocks of a request before its head blocks, are reused first.
- A block with a `block_hash` holds the keys/values of exactly the tokens that hash names, and is
  findable through `get_cached_block` until it is handed out again by `get_new_blocks`, which
  evicts it from the cache (LRU over the cached free blocks).
- The free queue is an OrderedDict, so taking a block off it when a prefix hit reuses it, and
  popping the next victim, are both O(1).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from array import array
from typing import NewType

BlockHash = NewType("BlockHash", bytes)


def hash_block_tokens(parent: BlockHash | None, token_ids: Sequence[int],
                      extra_key: int = 0) -> BlockHash:
    """The chained hash of one full block: it names the block's tokens and every token before.

    A cryptographic hash, so that one tenant cannot craft a prompt whose blocks collide with
    another's cached blocks. `extra_key` separates caches that must not mix (a LoRA adapter).
    """
    h = hashlib.blake2b(digest_size=16)
    if parent is not None:
        h.update(parent)
    h.update(extra_key.to_bytes(8, "little", signed=True))
    h.update(array("q", token_ids).tobytes())
    return BlockHash(h.digest())


@dataclass(eq=False, slots=True)
class KVCacheBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, KVCacheBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[BlockHash, KVCacheBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        """Fraction of blocks held by requests (cached free blocks count as free)."""
        return 1.0 - len(self._free) / self.num_blocks

    def get_cached_block(self, block_hash: BlockHash) -> KVCacheBlock | None:
        return self._cached.get(block_hash)

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take a reference on blocks found in the prefix cache."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        if num_blocks > len(self._free):
            raise ValueError(f"cannot get {num_blocks} blocks, only {len(self._free)} are free")
        blocks = []
        for _ in range(num_blocks):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt = 1
            blocks.append(block)
        return blocks

    def cache_full_block(self, block: KVCacheBlock, block_hash: BlockHash) -> None:
        """Record that `block` now holds the tokens named by `block_hash`."""
        if not self.enable_caching or block.block_hash is not None:
            return
        block.block_hash = block_hash
        # When two requests computed the same block, the first one stays findable.
        self._cached.setdefault(block_hash, block)

    def free_blocks(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference each; blocks reaching zero join the free queue in the given order."""
        for block in blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; only possible when no request holds a block."""
        if len(self._free) != self.num_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self._cached.clear()
        return True

    def _evict(self, block: KVCacheBlock) -> None:
        if self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]
        block.block_hash = None
