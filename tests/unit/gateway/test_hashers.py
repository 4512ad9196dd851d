"""The gateway hashes prompts exactly as the `sim` engine does, reading no further than matching needs."""

from __future__ import annotations

from typing import Any

import pytest

from computenet.engines.sim.kvcache import chain_hashes
from computenet.engines.sim.requests import prompt_ids
from computenet.engines.sim.tokens import chat_token_ids
from computenet.gateway.routing.hashers import engine_block_hashes
from computenet.gateway.routing.kv_index import KVBlockIndex
from computenet.gateway.routing.pipeline import PromptBlocks, RoutingRequest

TEXT = " ".join(f"word{i % 97}, and the model{i % 13}." for i in range(1500))  # ~9,000 tokens
CHAT = [
    {"role": "system", "content": TEXT[:3000]},
    {"role": "user", "content": [{"type": "text", "text": TEXT}]},
]


def hashes(content: Any, known: Any = None) -> PromptBlocks:
    found = engine_block_hashes(RoutingRequest("m", content=content), "sim", known)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("content", "ids"),
    [
        (TEXT, prompt_ids(TEXT)),
        ([TEXT], prompt_ids(TEXT)),
        (list(range(100)), list(range(100))),
        (CHAT, chat_token_ids([("system", TEXT[:3000]), ("user", TEXT)])),
    ],
    ids=["text", "batch-of-one", "token-ids", "chat"],
)
def test_every_block_is_hashed_as_the_sim_hashes_it(content: Any, ids: list[int]) -> None:
    found = hashes(content)
    assert found.hashes == chain_hashes(ids) and found.total == len(ids) // 16


@pytest.mark.parametrize("content", [TEXT, CHAT])
def test_hashing_stops_after_the_first_block_no_replica_holds(content: Any) -> None:
    """Replicas hold the first 120 blocks (one of them 40): the match is the one every block gives,
    from a fraction of the prompt, and the prompt's length is estimated within 5 %."""
    full = hashes(content).hashes
    index = KVBlockIndex()
    index.store("a", full[:120])
    index.store("b", full[:40])
    index.store("c", [12345, 67890])  # blocks of other prompts
    found = hashes(content, index)
    assert found.hashes == full[: len(found.hashes)]
    assert 120 < len(found.hashes) < len(full) // 2
    assert index.match(found.hashes) == index.match(full) == {"a": 120, "b": 40}
    assert abs(found.total - len(full)) <= 0.05 * len(full)


def test_with_nothing_cached_only_the_first_piece_is_read() -> None:
    found = hashes(TEXT, set())
    assert 0 < len(found.hashes) <= 2048 // 16 + 1 < len(hashes(TEXT).hashes)
    assert abs(found.total - len(hashes(TEXT).hashes)) <= 0.05 * found.total


@pytest.mark.parametrize("content", ["", "   ", [], ["one", "two"], [-1, 2], [True], {"text": "x"}, 7])
def test_a_prompt_the_sim_would_refuse_has_no_hashes(content: Any) -> None:
    assert engine_block_hashes(RoutingRequest("m", content=content), "sim") is None


def test_other_engines_hashes_are_not_known_here() -> None:
    assert engine_block_hashes(RoutingRequest("m", content=TEXT), "vllm") is None
