"""The filters and scorers a routing pipeline is built from, by name.

Each is small and rates candidates from what `RoutingState` knows: the gateway's own
in-flight counts (exact, this gateway only), the engines' scraped figures (all
traffic, up to one scrape interval old, ignored once stale), and the prefix indexes.
A scorer with nothing to go on says so with an empty list (see `Scorer.score`), so it
drops out of the sum instead of skewing it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import repeat

from .pipeline import Filter, Routable, RoutingRequest, RoutingState, Scorer, Snapshot

NEUTRAL = 0.5


def _lower_is_better(values: Sequence[float]) -> list[float]:
    """Min-max scaled so the lowest value scores 1 and the highest 0 (all equal: all 1)."""
    low, high = min(values), max(values)
    if high <= low:
        return [1.0] * len(values)
    scale = 1.0 / (high - low)
    return [(high - v) * scale for v in values]


class _Stateless:
    """Most scorers remember nothing between requests."""

    def routed(self, request: RoutingRequest, chosen: Routable, state: RoutingState) -> None:
        return None


# --- scorers -----------------------------------------------------------------------------------------


class LeastRequest(_Stateless):
    """Fewest requests this gateway has in flight to the endpoint."""

    name = "least-request"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        return _lower_is_better(snap.in_flight)


class QueueDepth(_Stateless):
    """Fewest requests waiting in the engine's queue (all gateways' traffic), this gateway's own
    in-flight count where the engine's figure is stale: queued requests are TTFT not yet paid."""

    name = "queue"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        return _lower_is_better(
            [e.waiting if e is not None else n for e, n in zip(snap.engines, snap.in_flight, strict=True)]
        )


class KVUsage(_Stateless):
    """Most free KV cache: a full cache preempts or queues, so new work does better elsewhere."""

    name = "kv-usage"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        return [1.0 - e.kv_cache_usage if e is not None else NEUTRAL for e in snap.engines]


def _shares(depths: Sequence[int], total: int) -> list[float]:
    """Each candidate's share of the `total` leading blocks it holds; no opinion when none holds any
    (`depths` empty, see `RoutingState.kv_depths`)."""
    if not depths:
        return []
    scale = 1.0 / total
    return [depth * scale for depth in depths]


class ApproxPrefix:
    """Share of the prompt's leading text blocks this gateway sent to the endpoint before."""

    name = "prefix"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        held, total = state.text_held(request)
        return _shares(list(map(held.get, snap.replicas, repeat(0))) if held else [], total)

    def routed(self, request: RoutingRequest, chosen: Routable, state: RoutingState) -> None:
        state.approx.record(chosen.replica, request.prompt_blocks())


class PrecisePrefix(_Stateless):
    """Share of the prompt's leading KV blocks the engine itself reported holding (KV events).

    The blocks are hashed as the candidate's engine hashes them; with no KV events
    wired, or an engine whose hashes cannot be computed here, it has no opinion (every
    candidate scores the same), and the load scorers decide."""

    name = "precise-prefix"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        if state.kv is None:
            return []  # no KV events: no opinion
        if snap.engine_kind() is not None:  # the usual case: one deployment, one engine
            return _shares(*state.kv_depths(request, snap))
        scores: list[float] = []  # mixed engines: each candidate against its engine's hashes
        for c in snap.candidates:
            held, total = state.kv_held(request, c.engine)
            scores.append(held.get(c.replica, 0) / total if total else 0.0)
        return scores


class LoraAffinity(_Stateless):
    """Prefer endpoints that already run the requested adapter, then those with a free adapter slot:
    loading an adapter costs the first request its load time. Not a LoRA request: all equal."""

    name = "lora"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        model = request.model
        if not state.board.lora_matters(model):
            return []  # no replica runs it and every one has a slot free: all would score the same
        scores = [
            NEUTRAL
            if e is None or not e.max_lora
            else 1.0
            if model in e.lora_adapters
            else NEUTRAL
            if len(e.lora_adapters) < e.max_lora
            else 0.0
            for e in snap.engines
        ]
        return [] if scores.count(NEUTRAL) == len(scores) else scores  # all neutral: no opinion


class SessionAffinity:
    """The endpoint the session's last request went to (its conversation is cached there)."""

    name = "session"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        pinned = state.sessions.get(request.session) if request.session else None
        if pinned is None or pinned not in snap.replicas:
            return []  # no conversation to follow (or its replica is not a candidate): no opinion
        scores = [0.0] * len(snap.replicas)
        scores[snap.replicas.index(pinned)] = 1.0
        return scores

    def routed(self, request: RoutingRequest, chosen: Routable, state: RoutingState) -> None:
        if request.session:
            state.sessions.pin(request.session, chosen.replica)


class RegionScore(_Stateless):
    """Endpoints in the preferred region (the request's `x-computenet-region`, else `region`)."""

    name = "region"

    def __init__(self, region: str | None = None) -> None:
        self.region = region

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        wanted = request.region or self.region
        if not wanted:
            return []  # no region asked for: no opinion
        return [1.0 if c.region == wanted else 0.0 for c in snap.candidates]


TOKENS_PER_BLOCK = 16  # vLLM's and the sim's KV block; a 64-character text block is about as many tokens


class PrefillLoad:
    """Least prefill work ahead of this prompt's first token, in tokens.

    The work ahead on an endpoint is the uncached prompt tokens this gateway sent it that
    have no first token yet (exact, but blind to other gateways), plus the engine's
    waiting requests beyond those (other gateways' traffic, from the scrape) priced at
    the uncached tokens a request typically brings (a moving average of what this scorer
    charged; before the first, this prompt's). Add the part of this prompt the endpoint
    would compute: its length less the prefix the engine holds (KV events), else less
    what this gateway routed there (approximate index).

    Hits and queues are priced in one unit, so a long cached prefix wins until the queue
    in front of it costs more than it saves: an estimate of TTFT, where the queue and
    prefix scorers each see half of it. Prompt length is estimated from its KV blocks
    when the engine's hashes are known, else from its text blocks (~16 tokens each).
    """

    name = "prefill-load"
    SMOOTHING = 0.05  # weight of the newest request in the typical-request average

    def __init__(self) -> None:
        self.typical_tokens = 0.0  # uncached prompt tokens a routed request typically brings

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        cached, blocks = self._cached_blocks(request, snap, state)
        request.cached_blocks = (snap.replicas, cached, blocks)
        typical = self.typical_tokens or blocks * TOKENS_PER_BLOCK  # no history: priced like this one
        per_block = TOKENS_PER_BLOCK
        # One comprehension over what the snapshot read once, rather than a loop that asks the
        # board for each endpoint: this scorer runs on every request. Per endpoint: the prefill
        # this gateway charged it, the engine's waiting requests this gateway did not send
        # (`e.waiting - own.prefilling`) at the typical size, less the part of this prompt it
        # holds (the prompt's own length is the same everywhere, so it is left out). An endpoint
        # the board has never seen (`own` None) has never been scraped either (`e` None).
        return _lower_is_better(
            [
                -per_block * depth
                if own is None
                else own.prefill_tokens
                - per_block * depth
                + (n * typical if e is not None and (n := e.waiting - own.prefilling) > 0 else 0.0)
                for depth, own, e in zip(cached, snap.signals, snap.engines, strict=True)
            ]
        )

    @staticmethod
    def _cached_blocks(request: RoutingRequest, snap: Snapshot, state: RoutingState) -> tuple[list[int], int]:
        """Leading blocks each candidate holds (never more than the prompt's), and the prompt's
        length in blocks."""
        depths, blocks = state.kv_depths(request, snap)
        if blocks:
            return depths or [0] * len(snap.replicas), blocks
        held, blocks = state.text_held(request)
        return list(map(held.get, snap.replicas, repeat(0))), blocks

    def routed(self, request: RoutingRequest, chosen: Routable, state: RoutingState) -> None:
        if request.cached_blocks is None:  # a lone candidate: nothing was scored
            return
        replicas, cached, blocks = request.cached_blocks
        depth = cached[replicas.index(chosen.replica)] if chosen.replica in replicas else 0
        request.prefill_tokens = TOKENS_PER_BLOCK * (blocks - depth)
        state.board.begin_prefill(chosen.replica, request.prefill_tokens)
        if self.typical_tokens:
            self.typical_tokens += self.SMOOTHING * (request.prefill_tokens - self.typical_tokens)
        else:  # the first request: nothing to average yet
            self.typical_tokens = float(request.prefill_tokens)


# --- filters -----------------------------------------------------------------------------------------


class Saturation:
    """Stop sending to an endpoint whose engine queue or KV cache is past a threshold.

    With every endpoint past it, nothing passes and the gateway answers 503: better
    than piling work on a replica that can only queue or preempt it.
    """

    name = "saturation"

    def __init__(
        self, max_waiting: float = 64, max_kv_usage: float = 0.98, max_in_flight: float | None = None
    ) -> None:
        self.max_waiting, self.max_kv_usage = max_waiting, max_kv_usage
        self.max_in_flight = max_in_flight if max_in_flight is not None else math.inf

    def keep(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[bool]:
        max_waiting, max_kv_usage = self.max_waiting, self.max_kv_usage
        fits = [
            e is None or (e.waiting < max_waiting and e.kv_cache_usage < max_kv_usage) for e in snap.engines
        ]
        if self.max_in_flight == math.inf:  # the usual case: no need to walk the in-flight counts too
            return fits
        return [ok and n < self.max_in_flight for ok, n in zip(fits, snap.in_flight, strict=True)]


class RegionFilter:
    """The preferred region's endpoints while one of them has room; then those elsewhere with room.

    The preferred region is the request's `x-computenet-region`, else `region` (the gateway's own).
    "Room" is the `saturation` filter's test with its own thresholds: an engine queue or KV cache past
    them, or this gateway's in-flight count past `max_in_flight`, sends traffic to other regions
    rather than queueing it at home. Replicas that fail are out of the candidates already (the
    breakers and retries take them out), so a region whose replicas all fail spills too. With
    `spill` false the region is a hard boundary.
    """

    name = "region"

    def __init__(
        self,
        region: str | None = None,
        spill: bool = True,
        max_waiting: float = 16,
        max_kv_usage: float = 0.95,
        max_in_flight: float | None = None,
    ) -> None:
        self.region, self.spill = region, spill
        self._room = Saturation(max_waiting, max_kv_usage, max_in_flight)

    def keep(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[bool]:
        wanted = request.region or self.region
        if not wanted:
            return [True] * len(snap.replicas)
        local = [c.region == wanted for c in snap.candidates]
        if not self.spill or all(local):
            return local  # a hard boundary, or nowhere else to go: nothing more to decide
        room = self._room.keep(request, snap, state)
        home = [here and ok for here, ok in zip(local, room, strict=True)]
        if any(home):
            return home
        return room if any(room) else [True] * len(local)  # elsewhere with room, else as before


SCORERS: dict[str, Callable[..., Scorer]] = {
    s.name: s
    for s in (
        LeastRequest,
        QueueDepth,
        KVUsage,
        ApproxPrefix,
        PrecisePrefix,
        LoraAffinity,
        SessionAffinity,
        RegionScore,
        PrefillLoad,
    )
}
FILTERS: dict[str, Callable[..., Filter]] = {f.name: f for f in (Saturation, RegionFilter)}
