"""The paged KV cache: block accounting, prefix hits, LRU eviction and the events a router indexes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from computenet.engines.sim.kvcache import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVCache,
    chain_hashes,
    segment_hashes,
)


class Owner:
    def __init__(self, token_ids: Sequence[int], block_size: int = 16) -> None:
        self.prompt_token_ids = list(token_ids)
        self.block_hashes = chain_hashes(self.prompt_token_ids, block_size)
        self.blocks: list[int] = []
        self.num_cached_blocks = 0


def prefill(kv: KVCache, owner: Owner) -> None:
    """Admit `owner` the way the scheduler does: take its cached prefix, compute the rest, index it."""
    hits = kv.lookup(owner.block_hashes, (len(owner.prompt_token_ids) - 1) // kv.block_size)
    assert kv.allocate(owner, len(owner.prompt_token_ids), hits)
    kv.cache_full_blocks(owner, len(owner.prompt_token_ids))


def test_chained_hashes_share_exactly_the_common_full_blocks() -> None:
    base = list(range(40))
    same_two_blocks = [*base[:32], 999, *base[33:]]
    assert chain_hashes(base) == chain_hashes(list(base))
    assert len(chain_hashes(base)) == 2  # the 8-token tail is not a full block
    assert chain_hashes(same_two_blocks)[:2] == chain_hashes(base)[:2]
    changed_first = [7, *base[1:]]
    assert not set(chain_hashes(changed_first)) & set(
        chain_hashes(base)
    )  # a change re-keys every later block


def test_segment_hashes_share_blocks_exactly_where_segment_ids_agree() -> None:
    a = segment_hashes([0, 1, 2], prompt_len=1500, segment_tokens=512, block_size=16)
    b = segment_hashes([0, 1, 9], prompt_len=1536, segment_tokens=512, block_size=16)
    assert len(a) == 1500 // 16 and len(b) == 96
    common = sum(1 for x, y in zip(a, b, strict=False) if x == y)
    assert common == 64 and a[:64] == b[:64]
    assert len(set(a)) == len(a)


def test_allocation_counts_blocks_and_free_returns_them() -> None:
    kv = KVCache(num_blocks=10, block_size=16)
    owner = Owner(range(40))
    assert kv.allocate(owner, 40)
    assert len(owner.blocks) == 3 and kv.free_blocks == 7
    assert kv.usage == pytest.approx(0.3)
    assert kv.allocate(owner, 48)  # still three blocks
    assert len(owner.blocks) == 3
    assert kv.allocate(owner, 49) and len(owner.blocks) == 4
    kv.free(owner)
    assert kv.free_blocks == 10 and kv.usage == 0.0 and owner.blocks == []


def test_allocation_that_does_not_fit_changes_nothing() -> None:
    kv = KVCache(num_blocks=2, block_size=16)
    owner = Owner(range(40))
    assert not kv.allocate(owner, 40)
    assert owner.blocks == [] and kv.free_blocks == 2


def test_a_repeated_prefix_reuses_the_same_blocks() -> None:
    kv = KVCache(num_blocks=20, block_size=16)
    first = Owner(range(64))
    prefill(kv, first)
    first_blocks = list(first.blocks)
    kv.free(first)
    second = Owner([*range(48), *range(100, 116)])
    hits = kv.lookup(second.block_hashes, 3)
    assert hits == first_blocks[:3]
    free_before = kv.free_blocks
    assert kv.allocate(second, 64, hits)
    assert kv.free_blocks == free_before - 4  # three cached blocks taken back plus one new one
    assert second.blocks[:3] == hits


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    kv = KVCache(num_blocks=20, block_size=16)
    first = Owner(range(32))
    prefill(kv, first)
    kv.free(first)
    again = Owner(range(32))
    assert len(kv.lookup(again.block_hashes, (32 - 1) // 16)) == 1  # the scheduler's cap: 16 of 32


def test_eviction_takes_the_least_recently_freed_blocks_tail_first() -> None:
    kv = KVCache(num_blocks=4, block_size=16)
    a, b = Owner(range(32)), Owner(range(1000, 1032))
    prefill(kv, a)
    kv.free(a)
    prefill(kv, b)
    kv.free(b)
    c = Owner(range(2000, 2016))
    prefill(kv, c)  # one block: evicts a's *last* block, the least recently useful
    assert len(kv.lookup(a.block_hashes, 2)) == 1
    assert len(kv.lookup(b.block_hashes, 2)) == 2


def test_hit_and_query_counters_are_in_tokens() -> None:
    kv = KVCache(num_blocks=8, block_size=16)
    kv.record_lookup(100, 32)
    kv.record_lookup(50, 0)
    assert (kv.query_tokens, kv.hit_tokens) == (150, 32)


def test_events_describe_stored_and_evicted_blocks() -> None:
    kv = KVCache(num_blocks=2, block_size=16, events=True)
    a = Owner(range(32))
    prefill(kv, a)
    stored = kv.drain_events()
    assert stored == [BlockStored(a.block_hashes, None, list(range(32)), 16)]
    kv.free(a)
    b = Owner(range(500, 516))
    prefill(kv, b)
    events = kv.drain_events()
    assert isinstance(events[0], BlockRemoved) and events[0].block_hashes == [a.block_hashes[1]]
    assert isinstance(events[1], BlockStored) and events[1].parent_block_hash is None
    assert kv.drain_events() == []


def test_reset_is_refused_while_blocks_are_in_use() -> None:
    kv = KVCache(num_blocks=4, block_size=16, events=True)
    a = Owner(range(16))
    prefill(kv, a)
    assert not kv.reset_prefix_cache()
    kv.free(a)
    kv.drain_events()
    assert kv.reset_prefix_cache()
    assert kv.drain_events() == [AllBlocksCleared()]
    assert kv.lookup(a.block_hashes, 1) == []


def test_prefix_caching_off_never_hits() -> None:
    kv = KVCache(num_blocks=8, block_size=16, prefix_caching=False)
    a = Owner(range(32))
    prefill(kv, a)
    kv.free(a)
    assert kv.lookup(a.block_hashes, 2) == [] and kv.cached_blocks == 0
