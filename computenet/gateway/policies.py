"""Routing policies: which of a model's ready endpoints takes the next request.

A policy is a pure choice over candidates and the gateway's own load view; it does
no I/O. Policies register by name in `POLICIES`, and a Deployment names one in
`spec.routing.policy`.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Protocol, TypeVar


class LoadTracker:
    """Requests this gateway has in flight per replica."""

    def __init__(self) -> None:
        self._outstanding: defaultdict[str, int] = defaultdict(int)

    def acquire(self, replica: str) -> None:
        self._outstanding[replica] += 1

    def release(self, replica: str) -> None:
        self._outstanding[replica] -= 1
        if self._outstanding[replica] <= 0:
            del self._outstanding[replica]

    def outstanding(self, replica: str) -> int:
        return self._outstanding.get(replica, 0)


class Routable(Protocol):
    """Anything a policy can choose between: a replica's endpoint, an upstream."""

    @property
    def replica(self) -> str: ...


R = TypeVar("R", bound=Routable)


class RoutingPolicy(Protocol):
    def pick(self, model: str, candidates: Sequence[R], load: LoadTracker) -> R:
        """Choose one of `candidates` (never empty)."""
        ...


class RoundRobin:
    def __init__(self) -> None:
        self._counters: defaultdict[str, itertools.count[int]] = defaultdict(itertools.count)

    def pick(self, model: str, candidates: Sequence[R], load: LoadTracker) -> R:
        if len(candidates) == 1:
            return candidates[0]
        return candidates[next(self._counters[model]) % len(candidates)]


class LeastOutstanding:
    """Fewest in-flight requests; ties go round-robin so idle replicas share the work."""

    def __init__(self) -> None:
        self._tiebreak = RoundRobin()

    def pick(self, model: str, candidates: Sequence[R], load: LoadTracker) -> R:
        if len(candidates) == 1:
            return candidates[0]
        fewest = min(load.outstanding(e.replica) for e in candidates)
        tied = [e for e in candidates if load.outstanding(e.replica) == fewest]
        return self._tiebreak.pick(model, tied, load)


POLICIES: Mapping[str, Callable[[], RoutingPolicy]] = MappingProxyType(
    {"round_robin": RoundRobin, "least_outstanding": LeastOutstanding}
)
DEFAULT_POLICY = "least_outstanding"
