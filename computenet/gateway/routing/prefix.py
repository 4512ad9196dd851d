"""What the gateway remembers of where it sent things: prompt blocks per endpoint, and sessions.

Approximate prefix affinity (SGLang's router, vllm-router's `prefixaware`) keeps, per
endpoint, the prompt prefixes this gateway routed there, and assumes the engine
still caches them. Here a prompt is cut into blocks of text, each hash chained to
the one before (so equal hashes mean equal prefixes, as in vLLM's block hashes),
and every endpoint keeps its blocks in LRU order up to a budget that stands for
its KV-cache size. It is approximate in two ways the precise index (fed by the
engines' own KV events) is not: the engine may have evicted what the gateway
remembers, and each gateway replica only knows its own traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from .kv_index import KVBlockIndex

BLOCK_CHARS = 64  # ~16 tokens of English: about one KV block
DEFAULT_CAPACITY_BLOCKS = 65_536  # per endpoint: ~1M tokens, an 8B model's cache on one H100
_SESSIONS = 100_000  # pinned sessions kept; the least recently used are forgotten


def prompt_text(content: Any) -> str:
    """The prompt as one string, roles included (a system prompt is a prefix only under its role)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_message_text(item) for item in content)
    return ""


def _message_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        return ""
    body = item.get("content")
    if isinstance(body, list):  # content parts: keep the text ones
        body = "".join(
            p.get("text", "") for p in body if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return f"<{item.get('role', '')}>{body if isinstance(body, str) else ''}\n"


def text_block_hashes(content: Any, block_chars: int = BLOCK_CHARS) -> list[int]:
    """Chained hashes of the full `block_chars` blocks of the prompt's text."""
    text = prompt_text(content)
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(text) - block_chars + 1, block_chars):
        parent = hash((parent, text[start : start + block_chars]))
        hashes.append(parent)
    return hashes


class ApproxPrefixIndex:
    """Per endpoint, the prompt blocks routed there in LRU order (bounded), over the same block ->
    endpoints index the KV events feed, so both answer `match` the same way and as fast."""

    def __init__(self, capacity_blocks: int = DEFAULT_CAPACITY_BLOCKS) -> None:
        self.capacity_blocks = capacity_blocks
        self._lru: dict[str, OrderedDict[Hashable, None]] = {}
        self._index = KVBlockIndex()

    def record(self, replica: str, blocks: Sequence[Hashable]) -> None:
        """`replica` was sent a prompt with these blocks: it now (probably) caches them."""
        lru = self._lru.get(replica)
        if lru is None:
            lru = self._lru[replica] = OrderedDict()
        new: list[Hashable] = []
        # Tail first, so a prompt's head is its most recently used block and trimming takes the
        # tail: a head block gone would leave the blocks after it unreachable (a match stops at
        # the first block missing), as an engine evicting leaves of its prefix tree knows.
        for block in reversed(blocks):
            if block in lru:
                lru.move_to_end(block)
            else:
                lru[block] = None
                new.append(block)
        self._index.store(replica, new)
        if len(lru) > self.capacity_blocks:
            old = [lru.popitem(last=False)[0] for _ in range(len(lru) - self.capacity_blocks)]
            self._index.remove(replica, old)

    def match(self, blocks: Sequence[Hashable]) -> dict[str, int]:
        """For each endpoint holding the first block, how many leading blocks it holds in a row."""
        return self._index.match(blocks)

    def forget(self, replica: str) -> None:
        self._lru.pop(replica, None)
        self._index.forget(replica)

    def replicas(self) -> list[str]:
        return list(self._lru)

    @property
    def empty(self) -> bool:
        """Whether no replica holds any block (nothing to match, so no prompt needs hashing)."""
        return not len(self._index)

    def blocks(self, replica: str) -> int:
        return len(self._lru.get(replica, ()))


class SessionTable:
    """Session id -> the endpoint its last request went to (LRU-bounded)."""

    def __init__(self, capacity: int = _SESSIONS) -> None:
        self.capacity = capacity
        self._pins: OrderedDict[str, str] = OrderedDict()

    def get(self, session: str) -> str | None:
        return self._pins.get(session)

    def pin(self, session: str, replica: str) -> None:
        self._pins[session] = replica
        self._pins.move_to_end(session)
        if len(self._pins) > self.capacity:
            self._pins.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pins)
