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
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from computenet.engines.sim.kvcache import BLOCK_SIZE, ROOT_HASH, chain_hashes

from .kv_index import MEDIUM_GPU

# Field positions in vLLM's array-like `BlockStored`, the tag at 0 (see kv_index.py).
_HASHES, _PARENT, _TOKENS, _BLOCK_SIZE, _MEDIUM, _LORA_NAME = 1, 2, 3, 4, 6, 7
_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "medium", "lora_name")


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

    def translate(self, events: Iterable[Any]) -> list[dict[str, Any]]:
        """The events as `KVBlockIndex.apply` takes them, with the gateway's keys; ValueError, and no
        change, if one is malformed."""
        parsed = [_parse(event) for event in events]
        out: list[dict[str, Any]] = []
        for kind, fields in parsed:
            if kind == "BlockStored":
                keys = self._store(*fields)
                if keys:
                    out.append({"type": "BlockStored", "block_hashes": keys})
            elif kind == "BlockRemoved":
                keys = self._remove(fields[0])
                if keys:
                    out.append({"type": "BlockRemoved", "block_hashes": keys})
            elif kind == "AllBlocksCleared":
                self._keyed.clear()
                out.append({"type": "AllBlocksCleared"})
        return out

    def _store(
        self,
        hashes: list[Hashable],
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

    def _remove(self, hashes: list[Hashable]) -> list[int]:
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


def _parse(event: Any) -> tuple[str | None, tuple[Any, ...]]:
    """(tag, fields) of one decoded event; tag None for events that do not touch GPU blocks."""
    if isinstance(event, list | tuple) and event:
        tag = event[0]
        if tag == "BlockStored":
            values = [event[i] if len(event) > i else None for i in (_HASHES, _PARENT, _TOKENS, _BLOCK_SIZE)]
            values += [event[_MEDIUM] if len(event) > _MEDIUM else None]
            values += [event[_LORA_NAME] if len(event) > _LORA_NAME else None]
        elif tag == "BlockRemoved":
            values = [event[1] if len(event) > 1 else None, event[2] if len(event) > 2 else None]
        else:
            values = []
    elif isinstance(event, dict):
        tag = event.get("type")
        names = _STORED_FIELDS if tag == "BlockStored" else ("block_hashes", "medium")
        values = [event.get(name) for name in names]
    else:
        raise ValueError(f"a KV event is a tagged array or map, got {type(event).__name__}")
    if tag == "AllBlocksCleared":
        return tag, ()
    if tag not in ("BlockStored", "BlockRemoved"):
        return None, ()  # an event kind we do not know: nothing to act on
    hashes, medium = values[0], values[-1] if tag == "BlockRemoved" else values[4]
    if not isinstance(hashes, list | tuple):
        raise ValueError(f"{tag}.block_hashes must be an array, got {type(hashes).__name__}")
    if medium is not None and (not isinstance(medium, str) or medium.upper() != MEDIUM_GPU):
        return None, ()
    try:
        hash(tuple(hashes))
    except TypeError as exc:
        raise ValueError(f"{tag}.block_hashes holds an unhashable value: {exc}") from None
    if tag == "BlockRemoved":
        return tag, (list(hashes),)
    _, parent, tokens, size, _, adapter = values
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"BlockStored.block_size must be a positive integer, got {size!r}")
    if not isinstance(tokens, list | tuple) or not all(type(t) is int for t in tokens):
        raise ValueError("BlockStored.token_ids must be an array of integers")
    if len(tokens) != len(hashes) * size:
        raise ValueError(
            f"BlockStored carries {len(tokens)} token ids for {len(hashes)} blocks of {size} tokens"
        )
    try:
        hash(parent)
    except TypeError:
        raise ValueError("BlockStored.parent_block_hash is unhashable") from None
    return tag, (list(hashes), parent, list(tokens), size, adapter if isinstance(adapter, str) else None)
