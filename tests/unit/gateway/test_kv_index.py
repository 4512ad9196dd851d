"""The KV block index: which replica holds the longest leading run of a prompt's blocks."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from computenet.gateway.routing import kv_index
from computenet.gateway.routing.kv_index import KVBlockIndex


def stored(*hashes: Any, medium: str | None = "GPU") -> list[Any]:
    return ["BlockStored", list(hashes), None, [], 16, None, medium, None]


def removed(*hashes: Any, medium: str | None = "GPU") -> list[Any]:
    return ["BlockRemoved", list(hashes), medium]


CLEARED = ["AllBlocksCleared"]


def test_match_counts_only_the_consecutive_leading_blocks() -> None:
    index = KVBlockIndex()
    index.apply("a", [stored(1, 2, 3, 5)])  # holds 5 but not 4: the run stops at 3
    assert index.match([1, 2, 3, 4, 5]) == {"a": 3}
    assert index.match([1, 2]) == {"a": 2}
    assert index.match([2, 3]) == {"a": 2}  # any run from the first block asked for
    assert index.match([9, 1, 2]) == {}  # a miss on the first block is no match at all
    assert index.match([]) == {}


def test_two_replicas_each_get_their_own_depth() -> None:
    index = KVBlockIndex()
    index.apply("a", [stored(1, 2, 3, 4)])
    index.apply("b", [stored(1, 2)])
    index.apply("c", [stored(7)])
    assert index.match([1, 2, 3, 4, 5]) == {"a": 4, "b": 2}
    assert index.match([1, 2, 8]) == {"a": 2, "b": 2}
    assert index.match([7, 1]) == {"c": 1}


def test_removed_block_cuts_the_run_where_it_was() -> None:
    index = KVBlockIndex()
    index.apply("a", [stored(1, 2, 3, 4)])
    index.apply("b", [stored(1, 2, 3, 4)])
    index.apply("a", [removed(3)])
    assert index.match([1, 2, 3, 4]) == {"a": 2, "b": 4}
    index.apply("a", [removed(99)])  # never stored (or stored before we listened): no effect
    assert index.blocks("a") == 3


def test_a_hash_cached_twice_is_held_until_its_last_copy_goes() -> None:
    index = KVBlockIndex()
    index.apply("a", [stored(1, 2), stored(1, 2)])  # vLLM does not de-duplicate blocks
    index.apply("a", [removed(2)])
    assert index.match([1, 2]) == {"a": 2}
    index.apply("a", [removed(2)])
    assert index.match([1, 2]) == {"a": 1}


def test_clear_and_all_blocks_cleared_drop_one_replica_only() -> None:
    index = KVBlockIndex()
    index.apply("a", [stored(1, 2)])
    index.apply("b", [stored(1, 2)])
    index.clear("a")
    assert index.match([1, 2]) == {"b": 2}
    assert index.blocks("a") == 0 and index.blocks("b") == 2
    index.apply("a", [stored(1)])
    index.apply("b", [CLEARED, stored(5)])  # events of one batch apply in order
    assert index.match([1, 2]) == {"a": 1}
    assert index.match([5]) == {"b": 1}
    assert len(index) == 2


def test_forget_removes_the_replica_and_its_slot_is_reused() -> None:
    index = KVBlockIndex()
    for name in ("a", "b", "c"):
        index.apply(name, [stored(1, 2)])
    index.forget("b")
    assert index.match([1, 2]) == {"a": 2, "c": 2}
    assert sorted(index.replicas()) == ["a", "c"]
    index.apply("d", [stored(1)])  # takes b's place without inheriting its blocks
    assert index.match([1, 2]) == {"a": 2, "c": 2, "d": 1}
    index.forget("nobody")
    for name in ("a", "c", "d"):
        index.forget(name)
    assert len(index) == 0 and index.match([1]) == {}


def test_a_reused_slot_is_named_after_its_new_replica() -> None:
    """A match names replicas from masks it decoded before; a forgotten replica's bit must lose its name."""
    index = KVBlockIndex()
    for name in ("a", "b"):
        index.apply(name, [stored(1, 2)])
    assert index.match([1, 2]) == {"a": 2, "b": 2}  # this mask's names are kept now
    index.forget("b")
    index.apply("c", [stored(1, 2)])  # b's bit: the very same mask as before
    assert index.match([1, 2]) == {"a": 2, "c": 2}


def test_more_sharing_patterns_than_names_kept_are_each_named_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv_index, "_NAMED_MASKS", 4)
    index = KVBlockIndex()
    replicas = [f"r{n}" for n in range(6)]
    for n, name in enumerate(replicas):  # block h is held by the replicas of h's set bits: 63 patterns
        index.store(name, [h for h in range(64) if h >> n & 1])
    for _ in range(2):
        for h in range(1, 64):
            assert index.match([h]) == {name: 1 for n, name in enumerate(replicas) if h >> n & 1}


def test_bytes_and_int_hashes_are_opaque_keys() -> None:
    index = KVBlockIndex()
    h1, h2 = b"\x01" * 32, b"\x02" * 32
    index.apply("new-vllm", [stored(h1, h2)])
    index.apply("sim", [stored(2**64 - 1, 7)])
    assert index.match([h1, h2]) == {"new-vllm": 2}
    assert index.match([2**64 - 1, 7]) == {"sim": 2}


def test_blocks_off_the_gpu_are_not_counted() -> None:
    index = KVBlockIndex()
    index.apply("a", [stored(1, 2), stored(3, medium="CPU"), stored(4, medium=None)])
    assert index.match([1, 2, 3]) == {"a": 2}
    assert index.match([4]) == {"a": 1}  # engines that do not say are GPU
    index.apply("a", [removed(1, medium="CPU")])  # evicted from the CPU tier: still on the GPU
    assert index.match([1]) == {"a": 1}


def test_older_and_newer_event_layouts_are_both_read() -> None:
    index = KVBlockIndex()
    older = ["BlockStored", [1, 2], None, [], 16, None]  # before `medium` existed
    newer = ["BlockStored", [3], 2, [], 16, None, "GPU", None, [None], 0, "full_attention", None]
    as_map = {"type": "BlockStored", "block_hashes": [4], "medium": "GPU", "lora_name": None}
    unknown = ["BlockPinned", [1]]  # a kind this index does not know yet
    index.apply("a", [older, newer, as_map, unknown, ["BlockRemoved", [4]]])
    assert index.match([1, 2, 3, 4]) == {"a": 3}


@pytest.mark.parametrize(
    "bad",
    [
        "BlockStored",
        ["BlockStored", 5, None],
        ["BlockRemoved", [[1, 2]], "GPU"],
        {"type": "BlockStored"},
    ],
)
def test_a_malformed_event_rejects_the_whole_batch(bad: Any) -> None:
    index = KVBlockIndex()
    index.apply("a", [stored(1)])
    with pytest.raises(ValueError):
        index.apply("a", [CLEARED, stored(2), bad])
    assert index.match([1]) == {"a": 1} and index.blocks("a") == 1


def test_matches_agree_with_a_plain_walk_over_random_histories() -> None:
    """The walk's shortcuts (named masks, unchanged holders, one replica left and bisected) change
    no answer, over histories that keep each replica's blocks prefix-closed as engines do: blocks
    are stored a prompt's head first and evicted its tail first."""
    rng = random.Random(7)
    index = KVBlockIndex()
    held: dict[str, Counter[int]] = {}
    names = [f"r{n}" for n in range(12)]
    chains = [[100 * c + i for i in range(12)] for c in range(4)]  # four prompts' blocks
    for _ in range(3000):
        name, chain = rng.choice(names), rng.choice(chains)
        roll = rng.random()
        if roll < 0.6:
            hashes = chain[: rng.randrange(1, 13)]
            index.store(name, hashes)
            held.setdefault(name, Counter()).update(hashes)
        elif roll < 0.9:
            hashes = chain[rng.randrange(12) :]
            index.remove(name, hashes)
            if name in held:
                held[name].subtract(h for h in hashes if held[name][h] > 0)
        elif roll < 0.97:
            index.clear(name)
            held.pop(name, None)
        else:
            index.forget(name)
            held.pop(name, None)
        prompt = rng.choice(chains)[: rng.randrange(0, 13)] + [rng.randrange(1000, 1003)] * rng.randrange(2)
        expected = {}
        for replica, copies in held.items():
            depth = next((i for i, h in enumerate(prompt) if copies[h] <= 0), len(prompt))
            if depth:
                expected[replica] = depth
        assert index.match(prompt) == expected


def test_a_hole_in_one_replicas_blocks_is_bisected_over() -> None:
    """The documented cost of bisecting: a replica that kept a block's tail but lost a middle block
    (no engine evicts so) is credited up to the end of its run."""
    index = KVBlockIndex()
    index.store("a", list(range(10)))
    index.store("b", list(range(3)))  # the two share the head: walked block by block there
    index.remove("a", [6])
    assert index.match([*range(10), 99]) == {"b": 3, "a": 10}
    assert index.match([*range(7), 99]) == {"b": 3, "a": 6}  # where bisection lands in the hole
