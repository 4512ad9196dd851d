"""Which replica already holds a prompt's prefix in its KV cache, known from the engines' own events.

Engines publish every block they cache (`BlockStored`) and evict (`BlockRemoved`),
so the gateway can keep an exact index of block hash -> replicas instead of
guessing from what it routed earlier. Routing asks one question per request:
how many *leading* blocks of this prompt does each replica hold? A block only
helps if every block before it is cached too (the engine's lookup stops at the
first miss), so the walk keeps the set of replicas still matching and stops
when it is empty.

That question runs on every request, so the set is a bitmask: each replica owns
one bit, each hash maps to the mask of its holders, and a step of the walk is
one dict lookup and one integer AND. Bits of forgotten replicas are reused, so
masks stay as wide as the fleet, not as its history. Turning a mask back into
replica names is the other cost: a shared system prompt leaves all 64 replicas of
a fleet matching, then all but one, and naming 63 bits one by one costs more than
the walk itself. Masks repeat from request to request (everyone, everyone but the
replica that holds this conversation), so each distinct mask is named once and
kept, and a match fills its answer from the kept names at C speed. Two more
shortcuts follow the usual shape of a walk, a shared system prompt held by many
replicas, then the rest of a conversation held by one: a block with the same
holders as the one before costs no mask arithmetic, and once a single replica is
left the walk goes on in that replica's own block set, a table a fleet's size
smaller than the index's (and so more often in the CPU's cache), and by bisection
rather than block by block. That trusts a replica's blocks to be prefix-closed (holding
a block means holding every block before it), which engines keep: vLLM frees a finished
request's blocks tail first, so its LRU evicts tails before heads, and a lookup that
reuses a block reuses every block before it, so a head is never older than its tail;
the approximate index trims tails first for the same reason. (Sliding-window layers,
which drop blocks that leave the window, are the exception.) Where a hole slipped in
anyway, a replica is credited with more of the prompt than its engine will find: one
wrong route, costing a prefill, never a wrong answer.

Per replica the index also keeps how many cached copies of each hash it holds:
vLLM does not de-duplicate blocks (two requests filling the same block at once
both cache it and each copy is evicted on its own), so a hash is held until its
last copy goes. Those counts are also what make `clear` and `forget` cost the
replica's own blocks, not the whole index.

Events arrive as msgpack decoded them: vLLM's tagged array-like structs
(`["BlockStored", block_hashes, parent, token_ids, block_size, lora_id, medium,
lora_name, ...]`), or tagged maps (`{"type": "BlockStored", ...}`) from encoders
without `array_like`. Missing trailing fields (older vLLM) and extra ones
(newer) are both fine, and an event kind we do not know is skipped. Hashes are
opaque: ints in the sim and older vLLM, ints or bytes in newer ones. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal

MEDIUM_GPU = "GPU"

Op = Literal["store", "remove", "clear"]
_STORED_MEDIUM = 6  # field positions in vLLM's array-like structs, the tag at 0
_REMOVED_MEDIUM = 2
_NAMED_MASKS = 4096  # masks whose replica names are kept; past that the cache starts afresh


@dataclass(slots=True)
class _Holdings:
    bit: int  # this replica's bit in the holder masks
    copies: dict[Hashable, int] = field(default_factory=dict)  # block hash -> cached copies


class KVBlockIndex:
    """Block hash -> replicas whose GPU KV cache holds it, built only from engine KV events."""

    def __init__(self) -> None:
        self._holders: dict[Hashable, int] = {}  # block hash -> bitmask of replicas holding it
        self._replicas: dict[str, _Holdings] = {}
        self._names: dict[int, str] = {}  # bit -> replica
        self._free_bits: list[int] = []  # bits of forgotten replicas, reused before new ones
        self._next_bit = 1
        self._everyone = 0  # mask of every known replica
        self._named: dict[int, tuple[str, ...]] = {}  # mask -> its replicas, see `_names_in`

    def __len__(self) -> int:
        """Distinct block hashes held by at least one replica."""
        return len(self._holders)

    def __contains__(self, block_hash: object) -> bool:
        """Whether any replica holds this block."""
        return block_hash in self._holders

    def replicas(self) -> list[str]:
        return list(self._replicas)

    def blocks(self, replica: str) -> int:
        """Distinct block hashes `replica` holds; 0 for a replica the index has never heard of."""
        holdings = self._replicas.get(replica)
        return len(holdings.copies) if holdings is not None else 0

    def apply(self, replica: str, events: Iterable[Any]) -> None:
        """Apply one batch of `replica`'s events in order; ValueError, and no change, if one is malformed.

        Only GPU blocks count (medium `"GPU"`, or None from engines that do not say):
        blocks offloaded to CPU or disk tiers cost a transfer to reuse, so scoring them
        like GPU hits would over-rate a replica. They are skipped until routing weighs tiers.
        """
        self.apply_ops(replica, [parsed for event in events if (parsed := parse_event(event)) is not None])

    def apply_ops(self, replica: str, ops: Iterable[tuple[Op, Sequence[Hashable]]]) -> None:
        """Apply events already parsed (`parse_event`), or re-keyed (`EngineKeys.translate`)."""
        holdings = self._holdings(replica)
        for op, hashes in ops:
            if op == "store":
                self._store(holdings, hashes)
            elif op == "remove":
                self._remove(holdings, hashes)
            else:
                self._clear(holdings)

    def store(self, replica: str, hashes: Sequence[Hashable]) -> None:
        """`replica` now holds these blocks (one more copy each)."""
        self._store(self._holdings(replica), hashes)

    def remove(self, replica: str, hashes: Sequence[Hashable]) -> None:
        """`replica` dropped one copy of each of these blocks."""
        holdings = self._replicas.get(replica)
        if holdings is not None:
            self._remove(holdings, hashes)

    def clear(self, replica: str) -> None:
        """Drop every block of `replica` (its cache was reset, or its events can no longer be trusted)."""
        holdings = self._replicas.get(replica)
        if holdings is not None:
            self._clear(holdings)

    def forget(self, replica: str) -> None:
        """`replica` is gone: drop its blocks and free its bit for the next replica."""
        holdings = self._replicas.pop(replica, None)
        if holdings is None:
            return
        self._clear(holdings)
        del self._names[holdings.bit]
        self._named.clear()  # the freed bit will name another replica
        self._everyone &= ~holdings.bit
        self._free_bits.append(holdings.bit)

    def match(self, block_hashes: Sequence[Hashable]) -> dict[str, int]:
        """How many leading blocks of `block_hashes` each replica holds; replicas with none are left out."""
        found: dict[str, int] = {}
        live = self._everyone  # the replicas holding every block so far
        if not live:
            return found
        for depth, held in enumerate(map(self._holders.get, block_hashes, repeat(0))):
            if held == live:  # the usual step: the same replicas hold this block too
                continue
            still = live & held
            if still != live:  # the runs of the others end before this block
                if depth:
                    found.update(dict.fromkeys(self._names_in(live ^ still), depth))
                if not still:
                    return found
                live = still
                if not live & (live - 1):  # one replica left: follow it in its own blocks
                    name = self._names[live]
                    found[name] = _run_end(self._replicas[name].copies, block_hashes, depth + 1)
                    return found
        if block_hashes:
            found.update(dict.fromkeys(self._names_in(live), len(block_hashes)))
        return found

    def _names_in(self, mask: int) -> tuple[str, ...]:
        """The replicas whose bits `mask` holds, decoded once per distinct mask (module docstring)."""
        names = self._named.get(mask)
        if names is None:
            if len(self._named) >= _NAMED_MASKS:
                self._named.clear()
            names = tuple(name for bit, name in self._names.items() if mask & bit)
            self._named[mask] = names
        return names

    def _holdings(self, replica: str) -> _Holdings:
        holdings = self._replicas.get(replica)
        if holdings is None:
            if self._free_bits:
                bit = self._free_bits.pop()
            else:
                bit, self._next_bit = self._next_bit, self._next_bit << 1
            holdings = self._replicas[replica] = _Holdings(bit)
            self._names[bit] = replica
            self._everyone |= bit
        return holdings

    def _store(self, holdings: _Holdings, hashes: Sequence[Hashable]) -> None:
        copies, holders, bit = holdings.copies, self._holders, holdings.bit
        for block_hash in hashes:
            count = copies.get(block_hash, 0)
            copies[block_hash] = count + 1
            if not count:
                holders[block_hash] = holders.get(block_hash, 0) | bit

    def _remove(self, holdings: _Holdings, hashes: Sequence[Hashable]) -> None:
        copies = holdings.copies
        for block_hash in hashes:
            count = copies.get(block_hash)
            if count is None:  # stored before we listened, or cleared since: nothing to undo
                continue
            if count > 1:
                copies[block_hash] = count - 1
            else:
                del copies[block_hash]
                self._unhold(block_hash, holdings.bit)

    def _clear(self, holdings: _Holdings) -> None:
        for block_hash in holdings.copies:
            self._unhold(block_hash, holdings.bit)
        holdings.copies = {}

    def _unhold(self, block_hash: Hashable, bit: int) -> None:
        holders = self._holders
        mask = holders[block_hash] & ~bit
        if mask:
            holders[block_hash] = mask
        else:
            del holders[block_hash]


def _run_end(held: dict[Hashable, int], block_hashes: Sequence[Hashable], start: int) -> int:
    """Where the run of `block_hashes` that are keys of `held` ends, the block before `start` known
    held: found by bisection, trusting that a replica holding a block holds every block before it
    (the module docstring says why that holds), so ~log2(n) lookups instead of n, each one likely
    a cache miss in an index of millions of blocks. Hashers stop after the first block no
    replica holds, so the run usually ends at the last block or the one before: those two are
    looked at first."""
    contains = held.__contains__
    end = len(block_hashes)
    if start >= end or contains(block_hashes[end - 1]):
        return end
    lo, hi = start - 1, end - 1  # held, not held
    if hi - 1 > lo and contains(block_hashes[hi - 1]):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if contains(block_hashes[mid]):
            lo = mid
        else:
            hi = mid
    return hi


def parse_event(event: Any) -> tuple[Op, tuple[Hashable, ...]] | None:
    """One decoded event as (op, block hashes); None for events that do not touch GPU blocks."""
    if isinstance(event, list | tuple) and event:
        tag = event[0]
        hashes = event[1] if len(event) > 1 else None
        at = _STORED_MEDIUM if tag == "BlockStored" else _REMOVED_MEDIUM
        medium = event[at] if len(event) > at else None
    elif isinstance(event, dict):
        tag, hashes, medium = event.get("type"), event.get("block_hashes"), event.get("medium")
    else:
        raise ValueError(f"a KV event is a tagged array or map, got {type(event).__name__}")
    if tag == "AllBlocksCleared":
        return "clear", ()
    if tag not in ("BlockStored", "BlockRemoved"):
        return None  # an event kind newer than this index: nothing it can act on
    if not isinstance(hashes, list | tuple):
        raise ValueError(f"{tag}.block_hashes must be an array, got {type(hashes).__name__}")
    if medium is not None and (not isinstance(medium, str) or medium.upper() != MEDIUM_GPU):
        return None
    frozen = tuple(hashes)
    try:
        hash(frozen)  # every element hashable, checked at C speed before anything changes
    except TypeError as exc:
        raise ValueError(f"{tag}.block_hashes holds an unhashable value: {exc}") from None
    return ("store" if tag == "BlockStored" else "remove"), frozen
