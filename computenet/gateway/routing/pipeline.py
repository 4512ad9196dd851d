"""The routing pipeline: filters, then weighted scorers, then a picker.

This is the shape llm-d's scheduler and the Gateway API inference extension use,
because it composes: a saturation gate, a prefix-cache scorer and a queue scorer
are written once each and combined per Route in YAML, with weights. Every scorer
rates each candidate from 0 (worst) to 1 (best), so weights mean the same thing
whatever a scorer measures.

A pipeline is pure: everything it reads about endpoints comes from the
`RoutingState` handed to `pick`, so the fleet simulator runs the very same code in
virtual time. State a policy keeps between requests (the approximate prefix index,
session pins, a round-robin turn) changes only in `routed`, which the caller
invokes for the endpoint it really sent to (the circuit breaker may veto a pick).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Hashable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import Any, Protocol, TypeVar, cast

from computenet.engines.base import EngineLoad

from .prefix import BLOCK_CHARS, ApproxPrefixIndex, SessionTable, prompt_text, text_block_hashes
from .signals import EndpointSignals, SignalBoard


class Routable(Protocol):
    """Anything a pipeline can choose between: an upstream of the gateway, a replica of the fleet sim."""

    @property
    def replica(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def engine(self) -> str: ...


R = TypeVar("R", bound=Routable)


class PrefixMatcher(Protocol):
    """Which replicas hold how many leading blocks of a prompt (engine KV events, or the fleet's truth)."""

    def match(self, block_hashes: Sequence[Hashable]) -> dict[str, int]: ...

    def __contains__(self, block_hash: object) -> bool:
        """Whether any replica holds this block (a hasher stops at the first no one does)."""
        ...


@dataclass(slots=True)
class RoutingRequest:
    """What routing knows of one request. Block hashes are computed on first use, then kept."""

    model: str
    content: Any = None  # `messages` or `prompt` as the client sent it
    session: str | None = None  # x-session-id header, or the body's `user`
    region: str | None = None  # x-computenet-region header
    text_blocks: Sequence[Hashable] | None = None  # for approximate prefix affinity
    # every KV block hash of the prompt per engine name, when the caller knows them (the fleet
    # simulator); else the state's hasher computes as many as matching needs
    engine_blocks: dict[str, Sequence[Hashable]] = field(default_factory=dict)
    # the prompt's token ids as the candidates' engine tokenizes it, for engines whose KV events
    # are re-keyed from token ids (vLLM: the forwarder asks its /tokenize), and the LoRA adapter
    # it is for, whose blocks are keyed apart from the base model's (`rekey.py`)
    token_ids: Sequence[int] | None = None
    adapter: str | None = None
    # leading blocks of the prompt each candidate holds, in `Snapshot.replicas` order, and the
    # prompt's length in blocks (what `prefill-load` scored); then the uncached tokens the chosen
    # one was charged, which the forwarder gives back at the first token
    cached_blocks: tuple[Sequence[str], list[int], int] | None = None
    prefill_tokens: int = 0
    # the prefix indexes' answers for this prompt, kept for one pick (see `RoutingState.kv_held`),
    # and the KV answer as one depth per candidate of the pick's snapshot (`RoutingState.kv_depths`)
    kv_matches: dict[str, Held] = field(default_factory=dict)  # per engine name
    kv_depths: Depths | None = None
    text_match: Held | None = None

    def prompt_blocks(self) -> Sequence[Hashable]:
        if self.text_blocks is None:
            self.text_blocks = text_block_hashes(self.content)
        return self.text_blocks


KV_SCORERS = frozenset({"precise-prefix", "prefill-load"})  # scorers that read `RoutingState.kv_depths`
_ROSTERS = 256  # candidate sets remembered (`RoutingState.roster`)

Held = tuple[dict[str, int], int]
"""How many leading blocks of a prompt each replica holds (replicas with none left out), and the
prompt's length in those blocks."""
Depths = tuple[list[int], int]
"""How many leading blocks of a prompt each candidate of a snapshot holds, in its order (empty when
none holds any), and the prompt's length in blocks."""


@dataclass(frozen=True, slots=True)
class PromptBlocks:
    """A prompt's leading KV block hashes as its engine computes them, and its length in blocks.

    `hashes` may end early: once a block is held by no replica, no replica can match past
    it, so a hasher stops there (tokenizing a 12k-token prompt costs more than the rest of
    a routing decision) and estimates `total` from the part it read.
    """

    hashes: Sequence[Hashable]
    total: int


class EngineHasher(Protocol):
    """The block hashes `engine` would give this prompt, up to the first not in `known` (see
    `PromptBlocks`); None when they cannot be computed here."""

    def __call__(
        self, request: RoutingRequest, engine: str, known: Container[Hashable]
    ) -> PromptBlocks | None: ...


@dataclass
class RoutingState:
    """Everything routing reads and remembers, shared by every pipeline of one gateway."""

    board: SignalBoard = field(default_factory=SignalBoard)
    approx: ApproxPrefixIndex = field(default_factory=ApproxPrefixIndex)
    sessions: SessionTable = field(default_factory=SessionTable)
    kv: PrefixMatcher | None = None  # None until a replica publishes KV events: precise scoring abstains
    hasher: EngineHasher | None = None
    rng: random.Random = field(default_factory=random.Random)
    _rosters: dict[int, Roster] = field(default_factory=dict, repr=False)

    def roster(self, candidates: Sequence[R]) -> Roster:
        """`Roster.of(candidates)`, remembered while `candidates` is a tuple (immutable, and kept
        alive by the memo, so its id cannot be reused for another one)."""
        if type(candidates) is not tuple:
            return Roster.of(candidates)
        found = self._rosters.get(id(candidates))
        if found is None or found.candidates is not candidates:
            if len(self._rosters) >= _ROSTERS:  # routes' upstream tuples change on every registry update
                self._rosters.clear()
            found = self._rosters[id(candidates)] = Roster.of(candidates)
        return found

    def kv_held(self, request: RoutingRequest, engine: str) -> Held:
        """The prompt's leading KV blocks (hashed as `engine` hashes them) each replica's engine
        reported holding; nothing when that cannot be known (no KV events, or hashes this gateway
        cannot compute). Hashed and walked once per pick however many scorers ask (precise-prefix
        and prefill-load both do): together they are most of a routing decision's cost."""
        found = request.kv_matches.get(engine)
        if found is None:
            found = request.kv_matches[engine] = self._kv_held(request, engine)
        return found

    def kv_depths(self, request: RoutingRequest, snap: Snapshot) -> Depths:
        """`kv_held` as one depth per candidate of `snap`, worked out once per pick: precise-prefix
        and prefill-load both read it, and naming 64 replicas is a tenth of a decision. Nothing
        when the candidates run different engines (their hashes differ: ask `kv_held` per engine)."""
        found = request.kv_depths
        if found is None:
            kind = snap.engine_kind()
            held, total = self.kv_held(request, kind) if kind is not None else ({}, 0)
            found = request.kv_depths = (list(map(held.get, snap.replicas, repeat(0))) if held else [], total)
        return found

    def _kv_held(self, request: RoutingRequest, engine: str) -> Held:
        if self.kv is None:
            return {}, 0
        known = request.engine_blocks.get(engine)
        if known is not None:
            blocks: PromptBlocks | None = PromptBlocks(known, len(known))
        else:
            blocks = self.hasher(request, engine, self.kv) if self.hasher is not None else None
        if blocks is None or not blocks.total:
            return {}, 0
        return self.kv.match(blocks.hashes), blocks.total

    def text_held(self, request: RoutingRequest) -> Held:
        """The prompt's leading text blocks this gateway routed to each replica (the approximate
        index), walked once per pick as `kv_held` is. While the index is empty (no `prefix`
        scorer fills it: the default preset without KV events) only the prompt's length is asked
        for, and that needs no hashing."""
        if request.text_match is None:
            if request.text_blocks is None and self.approx.empty:
                request.text_match = ({}, len(prompt_text(request.content)) // BLOCK_CHARS)
            else:
                blocks = request.prompt_blocks()
                request.text_match = (self.approx.match(blocks), len(blocks)) if blocks else ({}, 0)
        return request.text_match


@dataclass(frozen=True, slots=True)
class Roster:
    """What a set of candidates says of itself: replica keys, and the engine every one runs (None
    when they differ). Fixed for as long as the set lives, so worked out once per set, not per pick
    (`RoutingState.roster`): the forwarder hands every request the same tuple of a route's upstreams."""

    candidates: Sequence[Routable]
    replicas: tuple[str, ...]
    kind: str | None

    @classmethod
    def of(cls, candidates: Sequence[Routable]) -> Roster:
        return cls(candidates, tuple(map(attrgetter("replica"), candidates)), _one_engine(candidates))


def _one_engine(candidates: Sequence[Routable]) -> str | None:
    """The engine every candidate runs; None when they differ."""
    kinds = set(map(attrgetter("engine"), candidates))
    return kinds.pop() if len(kinds) == 1 else None


@dataclass(slots=True)
class Snapshot:
    """The candidates that passed the filters, and their signals read once for every scorer."""

    candidates: Sequence[Routable]
    replicas: Sequence[str]
    in_flight: list[int]  # this gateway's requests in flight
    engines: list[EngineLoad | None]  # fresh scrapes; None when stale or never scraped
    signals: list[EndpointSignals | None]  # the board's live entries (read only); None never seen
    _kind: str | None = field(default=None, init=False)
    _kind_known: bool = field(default=False, init=False)

    def engine_kind(self) -> str | None:
        """The engine every candidate runs (prompts are hashed per engine), None when they differ;
        worked out once per pick for every scorer that asks."""
        if not self._kind_known:
            self._kind, self._kind_known = _one_engine(self.candidates), True
        return self._kind

    @classmethod
    def of(cls, candidates: Sequence[Routable], board: SignalBoard, roster: Roster | None = None) -> Snapshot:
        """The candidates' signals as the board has them now (`roster`: what they say of themselves,
        when already known)."""
        if roster is None:
            roster = Roster.of(candidates)
        snap = cls(candidates, roster.replicas, *board.read(roster.replicas))
        snap._kind, snap._kind_known = roster.kind, True
        return snap

    def keep(self, keep: Sequence[bool]) -> Snapshot:
        """The candidates where `keep` is true (a filter's answer)."""
        if all(keep):
            return self
        pos = [i for i, k in enumerate(keep) if k]
        return Snapshot(
            [self.candidates[i] for i in pos],
            [self.replicas[i] for i in pos],
            [self.in_flight[i] for i in pos],
            [self.engines[i] for i in pos],
            [self.signals[i] for i in pos],
        )


class Filter(Protocol):
    name: str

    def keep(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[bool]:
        """Which candidates may take the request; none means none may (the caller answers 503)."""
        ...


class Scorer(Protocol):
    name: str

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        """One score in [0, 1] per candidate of `snap`, in order; higher is better.

        An empty list says the scorer has no opinion on this request (every candidate
        would score the same, e.g. no session to follow): it drops out of the sum, which
        picks the same winner as a constant column, for less work.
        """
        ...

    def routed(self, request: RoutingRequest, chosen: Routable, state: RoutingState) -> None:
        """The request went to `chosen`: remember what later requests should know."""
        ...


class Picker(Protocol):
    name: str

    def pick(self, totals: Sequence[float], rng: random.Random) -> int:
        """The position of the winner among candidates with these total scores (never empty)."""
        ...

    def routed(self) -> None:
        """The pick was used (a round-robin turn moves only then)."""
        ...


class RoutingPolicy(Protocol):
    """The seam between the forwarder (or the fleet simulator) and a way of choosing endpoints."""

    name: str

    @property
    def reads_kv(self) -> bool:
        """Whether picks read the engines' KV index (then a vLLM prompt's token ids are worth fetching)."""
        ...

    def pick(self, request: RoutingRequest, candidates: Sequence[R], state: RoutingState) -> R | None:
        """One of `candidates` (never empty), or None when every one was filtered out."""
        ...

    def routed(self, request: RoutingRequest, chosen: Routable, state: RoutingState) -> None:
        """The request was really sent to `chosen`."""
        ...


@dataclass
class Pipeline:
    """The `RoutingPolicy` every preset and custom policy is. `name`: the preset, or `custom`."""

    name: str
    filters: Sequence[Filter] = ()
    scorers: Sequence[tuple[Scorer, float]] = ()
    picker: Picker = field(default_factory=lambda: MaxScore())

    @property
    def reads_kv(self) -> bool:
        return any(weight and scorer.name in KV_SCORERS for scorer, weight in self.scorers)

    def pick(self, request: RoutingRequest, candidates: Sequence[R], state: RoutingState) -> R | None:
        if not self.filters:  # nothing to turn away; with nothing to score either, no signal is read
            if len(candidates) == 1:
                return candidates[0]
            if not self.scorers:
                return candidates[self.picker.pick([0.0] * len(candidates), state.rng)]
        request.kv_matches.clear()  # a retry's pick sees the indexes as they are now
        request.kv_depths = request.text_match = None
        snap = Snapshot.of(candidates, state.board, state.roster(candidates))
        for gate in self.filters:
            snap = snap.keep(gate.keep(request, snap, state))
            if not snap.candidates:
                return None
        chosen = snap.candidates
        if len(chosen) > 1:
            weighted = [
                scores if weight == 1 else [weight * v for v in scores]
                for scorer, weight in self.scorers
                if weight and (scores := scorer.score(request, snap, state))
            ]
            chosen = [chosen[self.picker.pick(_totals(weighted, len(chosen)), state.rng)]]
        return cast(R, chosen[0])

    def routed(self, request: RoutingRequest, chosen: Routable, state: RoutingState) -> None:
        for scorer, _ in self.scorers:
            scorer.routed(request, chosen, state)
        self.picker.routed()


def _totals(weighted: list[list[float]], candidates: int) -> list[float]:
    """Each candidate's total over the scorers that had an opinion (none: all tie)."""
    if len(weighted) > 1:
        # Summed column by column: one pass instead of one list per scorer (a third of the cost),
        # each sum started at 0.0 so that `sum` takes its float path from the first score.
        return list(map(sum, zip(*weighted, strict=True), repeat(0.0)))
    return weighted[0] if weighted else [0.0] * candidates


# --- pickers -----------------------------------------------------------------------------------------


class _Memoryless:
    def routed(self) -> None:
        return None


class MaxScore(_Memoryless):
    """The highest total; ties broken at random, so equal endpoints share the work."""

    name = "max"

    def pick(self, totals: Sequence[float], rng: random.Random) -> int:
        near_best = max(totals) - 1e-9
        tied = [i for i, t in enumerate(totals) if t >= near_best]
        return tied[0] if len(tied) == 1 else tied[rng.randrange(len(tied))]


class RandomPick(_Memoryless):
    """Uniform, blind to scores: the baseline every policy must beat."""

    name = "random"

    def pick(self, totals: Sequence[float], rng: random.Random) -> int:
        return rng.randrange(len(totals))


class RoundRobinPick:
    """Each candidate in turn (the turn moves only when a request is really sent)."""

    name = "round-robin"

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, totals: Sequence[float], rng: random.Random) -> int:
        return self._turn % len(totals)

    def routed(self) -> None:
        self._turn += 1


class PowerOfTwo(_Memoryless):
    """Two candidates drawn at random, the better one wins: near least-loaded at O(1) scoring cost,
    and no herd onto one endpoint when many gateways see the same stale figures."""

    name = "power-of-two"

    def pick(self, totals: Sequence[float], rng: random.Random) -> int:
        a, b = rng.sample(range(len(totals)), 2)
        if totals[a] == totals[b]:
            return a  # already a random one of the two
        return a if totals[a] > totals[b] else b


PICKERS: dict[str, Callable[[], Picker]] = {
    p.name: p for p in (MaxScore, RandomPick, RoundRobinPick, PowerOfTwo)
}
