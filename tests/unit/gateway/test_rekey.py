"""vLLM's KV events re-keyed by their token ids: the gateway's index must find a prompt's blocks
whatever hash the engine used, at any block size that is a multiple of 16."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from computenet.engines.sim.kvcache import chain_hashes
from computenet.gateway.routing.hashers import engine_block_hashes
from computenet.gateway.routing.kv_index import KVBlockIndex
from computenet.gateway.routing.pipeline import RoutingRequest
from computenet.gateway.routing.rekey import EngineKeys, adapter_root

PROMPT = list(range(5000, 5000 + 128))  # 8 blocks of 16


def vllm_hash(*parts: Any) -> bytes:
    """Stands for vLLM's block hash: 32 opaque bytes the gateway cannot recompute."""
    return hashlib.sha256(repr(("seed", *parts)).encode()).digest()


def stored(tokens: list[int], size: int, parent: bytes | None = None, **extra: Any) -> list[Any]:
    """vLLM's array-like `BlockStored` for consecutive blocks of `tokens`, chained from `parent`."""
    hashes, prev = [], parent
    for start in range(0, len(tokens), size):
        prev = vllm_hash(prev, tuple(tokens[start : start + size]))
        hashes.append(prev)
    medium = extra.get("medium", "GPU")
    return ["BlockStored", hashes, parent, tokens, size, None, medium, extra.get("lora_name")]


class Replica:
    """One replica's event stream through `EngineKeys` into the index, as the subscriber runs it."""

    def __init__(self, index: KVBlockIndex, name: str = "r0") -> None:
        self.index, self.name, self.keys = index, name, EngineKeys()

    def send(self, *events: Any) -> None:
        self.index.apply_ops(self.name, self.keys.translate(events))


def held(index: KVBlockIndex, tokens: list[int], adapter: str | None = None) -> dict[str, int]:
    """Leading 16-token blocks of `tokens` each replica holds, hashed as the gateway hashes a prompt."""
    request = RoutingRequest("m", token_ids=tokens, adapter=adapter)
    blocks = engine_block_hashes(request, "vllm")
    assert blocks is not None
    return index.match(blocks.hashes)


def test_a_prompt_is_found_by_its_tokens_whatever_the_engine_hashed() -> None:
    index = KVBlockIndex()
    Replica(index).send(stored(PROMPT[:64], 16))
    assert held(index, PROMPT) == {"r0": 4}


@pytest.mark.parametrize("size", [32, 64])
def test_larger_engine_blocks_are_split_into_16_token_keys(size: int) -> None:
    index = KVBlockIndex()
    Replica(index).send(stored(PROMPT[:size], size))
    assert held(index, PROMPT) == {"r0": size // 16}


def test_a_later_block_continues_its_parents_chain() -> None:
    index = KVBlockIndex()
    replica = Replica(index)
    first = stored(PROMPT[:32], 16)
    replica.send(first)
    replica.send(stored(PROMPT[32:96], 32, parent=first[1][-1]))  # the next turn, another block size
    assert held(index, PROMPT) == {"r0": 6}
    assert held(index, PROMPT[:32] + [1] * 96) == {"r0": 2}  # a different tail shares only the head


def test_removing_an_engine_block_drops_its_keys_once_its_last_copy_goes() -> None:
    index = KVBlockIndex()
    replica = Replica(index)
    event = stored(PROMPT[:64], 32)
    replica.send(event, event)  # vLLM does not de-duplicate: two copies of each block
    tail = event[1][-1]
    replica.send(["BlockRemoved", [tail], "GPU"])
    assert held(index, PROMPT) == {"r0": 4}
    replica.send(["BlockRemoved", [tail], "GPU"])
    assert held(index, PROMPT) == {"r0": 2}
    assert len(replica.keys) == 1


def test_blocks_that_cannot_be_keyed_are_counted_not_indexed() -> None:
    index = KVBlockIndex()
    replica = Replica(index)
    replica.send(stored(PROMPT[16:32], 16, parent=vllm_hash("never seen")))  # stored before we listened
    replica.send(stored(PROMPT[:8], 1))  # SGLang-style pages of one token
    assert held(index, PROMPT) == {}
    assert replica.keys.unkeyed == 1 + 8


def test_blocks_of_other_tiers_are_ignored() -> None:
    index = KVBlockIndex()
    Replica(index).send(stored(PROMPT[:32], 16, medium="CPU"))
    assert held(index, PROMPT) == {}


def test_an_adapters_blocks_match_only_its_own_requests() -> None:
    index = KVBlockIndex()
    Replica(index).send(stored(PROMPT[:32], 16, lora_name="sql"))
    assert held(index, PROMPT) == {}
    assert held(index, PROMPT, adapter="sql") == {"r0": 2}
    assert adapter_root("sql") != adapter_root("chat") != adapter_root(None)


def test_tagged_maps_work_as_arrays_do() -> None:
    index = KVBlockIndex()
    replica = Replica(index)
    array = stored(PROMPT[:32], 16)
    fields = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium")
    replica.send({"type": "BlockStored", **dict(zip(fields, array[1:7], strict=True))})
    assert held(index, PROMPT) == {"r0": 2}
    replica.send({"type": "AllBlocksCleared"})
    assert held(index, PROMPT) == {} and len(replica.keys) == 0


def test_a_malformed_batch_changes_nothing_and_names_the_field() -> None:
    index = KVBlockIndex()
    replica = Replica(index)
    good = stored(PROMPT[:32], 16)
    short = stored(PROMPT[32:64], 16, parent=good[1][-1])
    short[3] = short[3][:-1]  # one token id missing
    with pytest.raises(ValueError, match="31 token ids for 2 blocks of 16"):
        replica.send(good, short)
    assert held(index, PROMPT) == {} and len(replica.keys) == 0


def test_the_prompts_hashes_stop_after_the_first_block_no_replica_holds() -> None:
    index = KVBlockIndex()
    Replica(index).send(stored(PROMPT[:32], 16))
    long_prompt = PROMPT * 20  # 160 blocks
    blocks = engine_block_hashes(RoutingRequest("m", token_ids=long_prompt), "vllm", index)
    assert blocks is not None
    assert blocks.total == 160
    assert list(blocks.hashes[:2]) == chain_hashes(PROMPT[:32])
    assert len(blocks.hashes) <= 512 // 16  # one piece read, not the whole prompt


def test_without_token_ids_a_vllm_prompt_has_no_hashes() -> None:
    assert engine_block_hashes(RoutingRequest("m", content="hello " * 100), "vllm") is None
