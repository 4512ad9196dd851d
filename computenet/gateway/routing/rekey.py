"""An engine's KV events keyed by the gateway's own block hashes, computed from the events' token ids.

Precise prefix routing needs the request's block hashes to equal the ones in the
engine's events. vLLM's cannot be reproduced outside the engine with any confidence:
SHA-256 or xxHash (`--prefix-caching-hash-algo`) over (parent, tokens, extra keys), the
first parent seeded at random per process unless `PYTHONHASHSEED` is set, and the
encoding has changed between releases. But every `BlockStored` also carries the
token ids it covers, so the gateway re-hashes those with its own chain (the sim's,
`chain_hashes`) and keys the index by that. The engine's hash is kept for two things
only: to find a stored block's parent (its chain continues from the parent's key) and to
undo a block on `BlockRemoved`. The request side then needs only the prompt's token
ids as the engine tokenizes them (the forwarder asks the engine's `/tokenize`).

Engine blocks of any multiple of `BLOCK_SIZE` tokens (vLLM's 16, 32, 64...) are split
into `BLOCK_SIZE`-token keys, so one request hashing serves replicas of every block
size; a replica with another block size (SGLang's page size 1, say) cannot be keyed and
its blocks are counted in `unkeyed` instead. So is a block whose parent the gateway never
saw stored (it was cached before the gateway subscribed and no replay reached back):
without the parent's key, the chain has no start. LoRA adapters' blocks are chained from
the adapter's own root (`adapter_root`), as vLLM's extra keys keep them apart from the
base model's.

Pure, no I/O: `KVEventSubscriber` runs one `EngineKeys` per replica that needs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from computenet.engines.sim.kvcache import BLOCK_SIZE, ROOT_HASH, chain_hashes

from .kv_index import Op, parse_event

# What re-keying reads of a `BlockStored` beyond its hashes: positions in vLLM's array-like struct
# (the tag at 0, see kv_index.py), and names in a tagged map.
_STORED_AT = (2, 3, 4, 7)
_STORED_FIELDS = ("parent_block_hash", "token_ids", "block_size", "lora_name")


def adapter_root(adapter: str | None) -> int:
    """Where a prompt's key chain starts: the base model's root, or one per LoRA adapter."""
    if not adapter:
        return ROOT_HASH
    return int.from_bytes(hashlib.sha256(b"lora\0" + adapter.encode()).digest()[:8], "big")


@dataclass(slots=True)
class _Keyed:
    keys: tuple[int, ...]  # the gateway's keys of one engine block, in order
    copies: int  # the engine's cached copies of that block (vLLM does not de-duplicate)


class EngineKeys:
    """One replica's engine block hashes -> the gateway's keys, kept from its `BlockStored` events."""

    def __init__(self) -> None:
        self._keyed: dict[Hashable, _Keyed] = {}
        self.unkeyed = 0  # blocks that could not be re-keyed (module docstring)

    def __len__(self) -> int:
        return len(self._keyed)

    def clear(self) -> None:
        """The replica's cache was reset, or its events can no longer be trusted."""
        self._keyed.clear()

    def translate(self, events: Iterable[Any]) -> list[tuple[Op, Sequence[Hashable]]]:
        """The events as `KVBlockIndex.apply_ops` takes them, with the gateway's keys; ValueError,
        and no change, if one is malformed."""
        parsed = []
        for event in events:
            found = parse_event(event)  # checks the hashes, skips other tiers and unknown kinds
            if found is not None:
                op, hashes = found
                parsed.append((op, hashes, _stored_fields(event, len(hashes)) if op == "store" else None))
        ops: list[tuple[Op, Sequence[Hashable]]] = []
        for op, hashes, stored in parsed:
            if op == "clear":
                self._keyed.clear()
                ops.append((op, ()))
                continue
            keys = self._store(hashes, *stored) if stored is not None else self._remove(hashes)
            if keys:
                ops.append((op, keys))
        return ops

    def _store(
        self,
        hashes: Sequence[Hashable],
        parent: Hashable | None,
        tokens: list[int],
        size: int,
        adapter: str | None,
    ) -> list[int]:
        if not hashes:
            return []
        if size % BLOCK_SIZE:
            self.unkeyed += len(hashes)
            return []
        if parent is None:
            root = adapter_root(adapter)
        elif (keyed := self._keyed.get(parent)) is not None:
            root = keyed.keys[-1]
        else:
            self.unkeyed += len(hashes)
            return []
        keys = chain_hashes(tokens, BLOCK_SIZE, root)
        per_block = size // BLOCK_SIZE
        for i, engine_hash in enumerate(hashes):
            found = self._keyed.get(engine_hash)
            if found is None:
                self._keyed[engine_hash] = _Keyed(tuple(keys[i * per_block : (i + 1) * per_block]), 1)
            else:
                found.copies += 1
        return keys

    def _remove(self, hashes: Sequence[Hashable]) -> list[int]:
        keys: list[int] = []
        for engine_hash in hashes:
            found = self._keyed.get(engine_hash)
            if found is None:  # stored before we listened, or not keyable: nothing to undo
                continue
            keys += found.keys
            found.copies -= 1
            if not found.copies:
                del self._keyed[engine_hash]
        return keys


def _stored_fields(event: Any, blocks: int) -> tuple[Hashable | None, list[int], int, str | None]:
    """A `BlockStored`'s parent hash, token ids, block size and LoRA adapter name, checked (its
    hashes and medium `parse_event` has checked already)."""
    if isinstance(event, dict):
        parent, tokens, size, adapter = (event.get(name) for name in _STORED_FIELDS)
    else:
        parent, tokens, size, adapter = (event[i] if len(event) > i else None for i in _STORED_AT)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"BlockStored.block_size must be a positive integer, got {size!r}")
    if not isinstance(tokens, list | tuple) or not all(type(t) is int for t in tokens):
        raise ValueError("BlockStored.token_ids must be an array of integers")
    if len(tokens) != blocks * size:
        raise ValueError(f"BlockStored carries {len(tokens)} token ids for {blocks} blocks of {size} tokens")
    try:
        hash(parent)
    except TypeError:
        raise ValueError("BlockStored.parent_block_hash is unhashable") from None
    return parent, list(tokens), size, adapter if isinstance(adapter, str) else None
