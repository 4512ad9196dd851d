"""`--max-in-flight auto`: each model's admission gate sized from its replicas' KV caches.

Per endpoint the gate admits floor(KV tokens / typical request tokens), the rule
of `computenet.engines.sizing`; a model's capacity is the sum over the endpoints
that answer its requests. KV tokens come from the engines' own /metrics (vLLM's
`cache_config_info`, SGLang's `max_total_num_tokens`, the sim's copy of vLLM's),
as last scraped: a replica's KV size is fixed for its life, so a scrape that has
gone stale for routing still tells it. The typical request is a moving average
of the prompt + completion tokens the gateway metered for the model.

The gate is sized before every admission, so the answer is cached per model and
recomputed only when it can change: the model's endpoints changed, some
endpoint's reported KV size changed (`SignalBoard.kv_version`), or more requests
finished: after the 1st, 2nd, 4th, 8th and 16th (while the average is young it
moves most), then every `REFRESH_EVERY`. Otherwise a request pays a dict lookup
and three comparisons.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from computenet.engines.sizing import TypicalRequest, kv_slots

from .registry import Upstream
from .routing.signals import SignalBoard

REFRESH_EVERY: Final = 16  # finished requests between recomputations of a model's capacity, at most

Endpoints = Sequence[Sequence[Upstream]]  # per target backend, the upstreams that answer its requests


@dataclass(slots=True)
class _Model:
    typical: TypicalRequest = field(default_factory=TypicalRequest)
    endpoints: Endpoints | None = None  # what `capacity` was computed over
    kv_version: int = -1
    kv_sizes: Counter[float] = field(default_factory=Counter)  # endpoints by reported KV tokens (0 unknown)
    refresh_at: int = 0  # recompute once typical.seen reaches this
    capacity: int = 0


class AutoCapacity:
    """Gate capacities under `--max-in-flight auto`, one cached answer per model."""

    def __init__(self, board: SignalBoard, *, refresh_every: int = REFRESH_EVERY) -> None:
        self._board = board
        self._refresh_every = refresh_every
        self._models: dict[str, _Model] = {}

    def observe(self, model: str, tokens: float) -> None:
        """A request for `model` finished having held `tokens` (prompt + completion)."""
        self._model(model).typical.observe(tokens)

    def capacity(self, model: str, endpoints: Endpoints) -> int:
        """Requests `model` may have in flight over `endpoints` (0 when it has none)."""
        state = self._model(model)
        board = self._board
        seen = state.typical.seen
        same_endpoints = state.kv_version == board.kv_version and state.endpoints == endpoints
        if same_endpoints and seen < state.refresh_at:  # tuples compared by identity first: cheap
            return state.capacity
        if not same_endpoints:
            state.kv_sizes = Counter(self._kv_tokens(u.replica) for ups in endpoints for u in ups)
            state.endpoints, state.kv_version = endpoints, board.kv_version
        typical = state.typical.tokens
        # by distinct KV size (a fleet has one or two), not per endpoint: a refresh costs ~1 us, not 64
        state.capacity = sum(count * kv_slots(kv, typical) for kv, count in state.kv_sizes.items())
        state.refresh_at = seen + min(self._refresh_every, max(1, seen))
        return state.capacity

    def typical_tokens(self) -> dict[str, float]:
        """Each model's typical request, for /metrics (models with no finished request yet left out)."""
        return {m: s.typical.tokens for m, s in self._models.items() if s.typical.tokens is not None}

    def _model(self, model: str) -> _Model:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _Model()
        return state

    def _kv_tokens(self, replica: str) -> float:
        signals = self._board.get(replica)
        if signals is None or signals.engine is None:
            return 0.0  # never scraped (or nothing to scrape: a provider): unknown
        return signals.engine.kv_capacity_tokens
