"""The filters and scorers a routing pipeline is built from, by name.

Each is small and rates candidates from what `RoutingState` knows: the gateway's own
in-flight counts (exact, this gateway only), the engines' scraped figures (all
traffic, up to one scrape interval old, ignored once stale), and the prefix indexes.
A scorer with nothing to go on gives every candidate the same score, so it drops out
of the sum instead of skewing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .pipeline import Filter, Routable, RoutingRequest, RoutingState, Scorer, Snapshot

NEUTRAL = 0.5


def _lower_is_better(values: Sequence[float]) -> list[float]:
    """Min-max scaled so the lowest value scores 1 and the highest 0 (all equal: all 1)."""
    low, high = min(values), max(values)
    if high <= low:
        return [1.0] * len(values)
    span = high - low
    return [(high - v) / span for v in values]


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


class ApproxPrefix:
    """Share of the prompt's leading text blocks this gateway sent to the endpoint before."""

    name = "prefix"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        blocks = request.prompt_blocks()
        if not blocks:
            return [0.0] * len(snap.replicas)
        depth = state.approx.match(blocks)
        total = len(blocks)
        return [depth.get(r, 0) / total for r in snap.replicas]

    def routed(self, request: RoutingRequest, chosen: Routable, state: RoutingState) -> None:
        state.approx.record(chosen.replica, request.prompt_blocks())


class PrecisePrefix(_Stateless):
    """Share of the prompt's leading KV blocks the engine itself reported holding (KV events).

    The blocks are hashed as the candidate's engine hashes them; with no KV events
    wired, or an engine whose hashes cannot be computed here, every candidate scores 0."""

    name = "precise-prefix"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        if state.kv is None:
            return [0.0] * len(snap.replicas)
        first = snap.candidates[0].engine
        if all(c.engine == first for c in snap.candidates):  # the usual case: one deployment, one engine
            blocks = state.engine_blocks(request, first)
            if not blocks:
                return [0.0] * len(snap.replicas)
            held, total = state.kv.match(blocks), len(blocks)
            return [held.get(r, 0) / total for r in snap.replicas]
        # Mixed engines: per engine kind, the prompt's blocks and who holds how many.
        found: dict[str, tuple[int, dict[str, int]]] = {}
        scores: list[float] = []
        for c in snap.candidates:
            known = found.get(c.engine)
            if known is None:
                blocks = state.engine_blocks(request, c.engine)
                known = found[c.engine] = (len(blocks), state.kv.match(blocks)) if blocks else (0, {})
            total, depth = known
            scores.append(depth.get(c.replica, 0) / total if total else 0.0)
        return scores


class LoraAffinity(_Stateless):
    """Prefer endpoints that already run the requested adapter, then those with a free adapter slot:
    loading an adapter costs the first request its load time. Not a LoRA request: all equal."""

    name = "lora"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        scores = []
        for engine in snap.engines:
            if engine is None or not engine.max_lora:
                scores.append(NEUTRAL)
            elif request.model in engine.lora_adapters:
                scores.append(1.0)
            else:
                scores.append(NEUTRAL if len(engine.lora_adapters) < engine.max_lora else 0.0)
        return scores


class SessionAffinity:
    """The endpoint the session's last request went to (its conversation is cached there)."""

    name = "session"

    def score(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[float]:
        pinned = state.sessions.get(request.session) if request.session else None
        return [1.0 if r == pinned else 0.0 for r in snap.replicas]

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
        return [1.0 if wanted and c.region == wanted else 0.0 for c in snap.candidates]


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
        self.max_in_flight = max_in_flight if max_in_flight is not None else float("inf")

    def keep(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[bool]:
        return [
            n < self.max_in_flight
            and (e is None or (e.waiting < self.max_waiting and e.kv_cache_usage < self.max_kv_usage))
            for e, n in zip(snap.engines, snap.in_flight, strict=True)
        ]


class RegionFilter:
    """Only the preferred region's endpoints, spilling over to the others when none is left there."""

    name = "region"

    def __init__(self, region: str | None = None, spill: bool = True) -> None:
        self.region, self.spill = region, spill

    def keep(self, request: RoutingRequest, snap: Snapshot, state: RoutingState) -> list[bool]:
        wanted = request.region or self.region
        if not wanted:
            return [True] * len(snap.replicas)
        local = [c.region == wanted for c in snap.candidates]
        return local if any(local) or not self.spill else [True] * len(local)


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
    )
}
FILTERS: dict[str, Callable[..., Filter]] = {f.name: f for f in (Saturation, RegionFilter)}
