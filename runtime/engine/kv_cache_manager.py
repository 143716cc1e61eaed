"""Per-request block tables over the block pool, and the prefix-cache lookup.

Layout of a request's blocks after `allocate_slots(request, num_new_tokens, computed)`:

    | computed before | computed (prefix hit) |  new tokens this step   | free slots |
    |<-------------- request.block_ids (ceil(total / block_size)) ---------------->|

A block is registered in the prefix cache as soon as the tokens that fill it are scheduled: the
model runner writes every token's keys and values before any attention reads them, so even a
request scheduled in the same step may share it.
"""
from __future__ import annotations

from dataclasses import dataclass

from infernetes.runtime.engine.block_pool import BlockPool, KVCacheBlock, hash_block_tokens
from infernetes.runtime.request import Request


@dataclass(slots=True)
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of those, tokens found in the cache


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True):
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        # How many leading blocks of each request are already registered in the prefix cache.
        self._num_cached_blocks: dict[str, int] = {}
        self.prefix_cache_stats = PrefixCacheStats()

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def usage(self) -> float:
        return self.pool.usage()

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """The longest cached prefix of the request, as blocks and a token count.

        The last token is always recomputed, so that the step samples from fresh logits.
        """
        if not self.enable_caching:
            return [], 0
        self._update_block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        blocks: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            blocks.append(block)
        return blocks, len(blocks) * self.block_size

    def record_prefix_lookup(self, num_prompt_tokens: int, num_cached_tokens: int) -> None:
        """Count one request's lookup; called once per request, when it is first admitted."""
        if self.enable_caching:
            self.prefix_cache_stats.queries += num_prompt_tokens
            self.prefix_cache_stats.hits += num_cached_tokens

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[KVCacheBlock] | None = None
                       ) -> list[KVCacheBlock] | None:
        """Make room for `num_new_tokens` more tokens; None (and no change) if memory is short."""
        new_computed_blocks = new_computed_blocks or []
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        num_required = -(-(num_computed + num_new_tokens) // self.block_size)
        num_new_blocks = num_required - len(blocks) - len(new_computed_blocks)
        # Cached blocks nobody holds sit in the free queue; reusing them takes them off it.
        num_evictable_hits = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if num_new_blocks > self.pool.num_free_blocks - num_evictable_hits:
            if not blocks:
                del self.req_to_blocks[request.request_id]
            return None
        self.pool.touch(new_computed_blocks)
        blocks.extend(new_computed_blocks)
        new_blocks = self.pool.get_new_blocks(max(num_new_blocks, 0))
        blocks.extend(new_blocks)
        if self.enable_caching:
            self._cache_full_blocks(request, blocks, num_computed + num_new_tokens)
        return new_blocks

    def free(self, request: Request) -> None:
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self._num_cached_blocks.pop(request.request_id, None)
        # Tail blocks are the least likely to be shared: evict them first.
        self.pool.free_blocks(reversed(blocks))

    def block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, ())]

    def _update_block_hashes(self, request: Request) -> None:
        hashes = request.block_hashes
        size = self.block_size
        while (len(hashes) + 1) * size <= request.num_tokens:
            start = len(hashes) * size
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block_tokens(parent, request.token_ids(start, start + size),
                                            request.lora_id))

    def _cache_full_blocks(self, request: Request, blocks: list[KVCacheBlock],
                           num_tokens: int) -> None:
        self._update_block_hashes(request)
        start = self._num_cached_blocks.get(request.request_id, 0)
        num_full = min(num_tokens // self.block_size, len(request.block_hashes))
        for i in range(start, num_full):
            self.pool.cache_full_block(blocks[i], request.block_hashes[i])
        self._num_cached_blocks[request.request_id] = max(start, num_full)
