"""Paged KV cache with automatic prefix caching, after vLLM v1's block pool.

Memory is split into fixed blocks of `block_size` tokens. A full block of a
prompt is identified by a chained hash — hash(parent block's hash, this block's
token ids) — so two prompts share a block exactly when they share every token
up to its end. Freed blocks keep their hash and go to the tail of an LRU free
queue; a later request whose prompt hashes to a cached block takes it back
instead of recomputing it, and allocation evicts from the head (least recently
freed first, and within one request its last blocks first, as vLLM does).

The manager is pure bookkeeping: no timing, no I/O. It optionally records
`BlockStored` / `BlockRemoved` / `AllBlocksCleared` events (vLLM's KV-event
vocabulary) for a publisher to drain; the fleet simulator leaves them off.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

BLOCK_SIZE = 16  # vLLM's default on CUDA
ROOT_HASH = 0  # parent hash of a prompt's first block
_MASK64 = (1 << 64) - 1


def chain_hashes(
    token_ids: Sequence[int], block_size: int = BLOCK_SIZE, parent: int = ROOT_HASH
) -> list[int]:
    """Hashes of the full blocks of `token_ids`, each chained to the one before (vLLM's scheme).

    Python's hash of a tuple of ints is the same in every process (string hashing is
    the randomised one), so a router can compute these from token ids and match a
    replica's KV events. vLLM itself uses sha256 over pickled (parent, tokens); any
    collision-resistant chain gives the same sharing structure.
    """
    hashes = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size]))) & _MASK64
        hashes.append(parent)
    return hashes


def segment_hashes(
    segment_ids: Sequence[int], prompt_len: int, segment_tokens: int, block_size: int
) -> list[int]:
    """Block hashes for a prompt known only by prefix-hash ids of `segment_tokens`-token segments.

    Traces like Mooncake's publish, instead of text, one id per 512-token segment
    where an id covers the whole prefix up to that segment. Sub-block j of segment
    id s is identified by (s, j), which gives exactly the sharing the trace
    describes without materialising hundreds of millions of token ids.
    """
    per_segment = segment_tokens // block_size
    full_blocks = prompt_len // block_size
    hashes: list[int] = []
    for segment in segment_ids:
        base = segment * per_segment  # ids are distinct per segment, so (segment, j) maps one-to-one
        hashes.extend(range(base, base + per_segment))
        if len(hashes) >= full_blocks:
            break
    del hashes[full_blocks:]
    return hashes


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: list[int]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class BlockOwner(Protocol):
    """What the cache needs of a request: its prompt's block hashes and the blocks it holds."""

    block_hashes: Sequence[int]
    prompt_token_ids: Sequence[int] | None
    blocks: list[int]
    num_cached_blocks: int


class KVCache:
    """Block allocation, reference counts, the prefix index and LRU eviction."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int = BLOCK_SIZE,
        *,
        prefix_caching: bool = True,
        events: bool = False,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}  # block hash -> block id
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.events: list[KVEvent] | None = [] if events else None
        self.query_tokens = 0  # prompt tokens looked up in the prefix cache
        self.hit_tokens = 0  # of those, tokens found cached

    @property
    def free_blocks(self) -> int:
        """Blocks no request references (cached ones included: they can be evicted)."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Share of blocks referenced by requests: vLLM's `kv_cache_usage_perc`."""
        return 1.0 - len(self._free) / self.num_blocks

    @property
    def cached_blocks(self) -> int:
        return len(self._cached)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def lookup(self, block_hashes: Sequence[int], max_blocks: int) -> list[int]:
        """Block ids of the longest cached prefix among the first `max_blocks` hashes."""
        if not self.prefix_caching:
            return []
        cached, hits = self._cached, []
        for block_hash in islice(block_hashes, max_blocks):  # no slice copy: routers ask on every arrival
            block = cached.get(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def record_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        self.query_tokens += prompt_tokens
        self.hit_tokens += hit_tokens

    def can_allocate(self, owner: BlockOwner, tokens: int, hits: Sequence[int] = ()) -> bool:
        needed = self.blocks_for(tokens) - len(owner.blocks) - len(hits)
        ref = self._ref
        reusable = sum(1 for block in hits if ref[block] == 0)  # hits sitting in the free queue
        return needed <= len(self._free) - reusable

    def allocate(self, owner: BlockOwner, tokens: int, hits: Sequence[int] = ()) -> bool:
        """Give `owner` blocks for `tokens` tokens in all, taking `hits` first; False if they do not fit."""
        if not self.can_allocate(owner, tokens, hits):
            return False
        ref, free = self._ref, self._free
        for block in hits:
            if ref[block] == 0:
                del free[block]
            ref[block] += 1
        owner.blocks.extend(hits)
        needed = self.blocks_for(tokens) - len(owner.blocks)
        if needed > 0:
            owner.blocks.extend(self._take(needed))
        return True

    def _take(self, count: int) -> list[int]:
        ref, hashes, cached, free = self._ref, self._hash, self._cached, self._free
        taken, evicted = [], []
        for _ in range(count):
            block = free.popitem(last=False)[0]
            block_hash = hashes[block]
            if block_hash is not None:
                if cached.get(block_hash) == block:
                    del cached[block_hash]
                    evicted.append(block_hash)
                hashes[block] = None
            ref[block] = 1
            taken.append(block)
        if evicted and self.events is not None:
            self.events.append(BlockRemoved(evicted))
        return taken

    def cache_full_blocks(self, owner: BlockOwner, computed_tokens: int) -> None:
        """Index the prompt blocks `owner` has now filled, so later prompts can hit them."""
        if not self.prefix_caching:
            return
        upto = min(computed_tokens // self.block_size, len(owner.block_hashes))
        start = owner.num_cached_blocks
        if upto <= start:
            return
        hashes, cached, blocks, block_hashes = self._hash, self._cached, owner.blocks, owner.block_hashes
        stored = []
        for index in range(start, upto):
            block_hash = block_hashes[index]
            block = blocks[index]
            if hashes[block] is None and block_hash not in cached:  # a twin already cached it: keep that one
                cached[block_hash] = block
                hashes[block] = block_hash
                stored.append(block_hash)
        owner.num_cached_blocks = upto
        if stored and self.events is not None:
            self._record_stored(owner, start, upto)

    def _record_stored(self, owner: BlockOwner, start: int, upto: int) -> None:
        assert self.events is not None
        parent = owner.block_hashes[start - 1] if start else None
        tokens = owner.prompt_token_ids
        token_ids = (
            list(tokens[start * self.block_size : upto * self.block_size]) if tokens is not None else []
        )
        self.events.append(
            BlockStored(list(owner.block_hashes[start:upto]), parent, token_ids, self.block_size)
        )

    def free(self, owner: BlockOwner) -> None:
        """Drop `owner`'s references; unreferenced blocks join the free queue, last block first."""
        ref, free = self._ref, self._free
        for block in reversed(owner.blocks):
            ref[block] -= 1
            if ref[block] == 0:
                free[block] = None
        owner.blocks = []
        owner.num_cached_blocks = 0

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash (vLLM's /reset_prefix_cache); refused while blocks are in use."""
        if len(self._free) != self.num_blocks:
            return False
        self._cached.clear()
        self._hash = [None] * self.num_blocks
        if self.events is not None:
            self.events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        if not self.events:
            return []
        drained, self.events = self.events, []
        return drained
