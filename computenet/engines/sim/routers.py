"""Routers for the fleet simulator: which replica takes an arriving request.

A router is a pure choice over snapshots of the routable replicas, as a gateway
would make it, so policies can be compared on hour-long traces in seconds and
without sockets. `ReplicaView.cached_prefix_tokens` answers what a precise
KV-event index (vLLM's `BlockStored` / `BlockRemoved` stream) would tell a
router; the load figures are what a gateway counts or scrapes.

Ties always rotate over the replicas: at light load most replicas look alike,
and "first wins" would pile every request on replica 0.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

from .scheduler import SimRequest


class ReplicaView(Protocol):
    """What a router may know about one replica at the moment a request arrives."""

    @property
    def index(self) -> int:
        """Stable id of the replica in its fleet (positions shift as replicas come and go)."""
        ...

    @property
    def ready(self) -> bool: ...

    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def outstanding(self) -> int:
        """Requests routed here that have not finished: what a gateway counts itself."""
        ...

    @property
    def kv_usage(self) -> float:
        """Share of KV blocks held by requests, vLLM's `kv_cache_usage_perc`."""
        ...

    @property
    def kv_blocks(self) -> int:
        """KV blocks the replica's cache holds in all: what an operator sizes a prefix index by."""
        ...

    def cached_prefix_tokens(self, block_hashes: Sequence[int]) -> int:
        """Prompt tokens of the longest prefix of `block_hashes` this replica has cached."""
        ...

    def cached_prefix_blocks(self, block_hashes: Sequence[int]) -> int:
        """How many leading blocks of `block_hashes` this replica has cached."""
        ...


class Router(Protocol):
    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int | None:
        """The position in `replicas` (never empty) of the replica that takes `request`.

        None refuses it: every replica is saturated, and the gateway would answer 503.
        """
        ...


class _Rotation:
    """Picks the minimum of a key; equal keys go to the replica after the last one that won a tie."""

    def __init__(self) -> None:
        self._turn = 0

    def best(self, keys: Sequence[tuple[float, float]]) -> int:
        """Position of the smallest key (keys are per replica, in order)."""
        count = len(keys)
        start = self._turn % count
        self._turn += 1
        return min(range(count), key=lambda i: (keys[i], (i - start) % count))


class RandomRouter:
    """Uniformly at random from a seeded generator: the baseline every policy should beat."""

    def __init__(self, *, seed: int = 0) -> None:
        self._random = random.Random(seed)

    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int:
        return self._random.randrange(len(replicas))


class RoundRobin:
    """Each replica in turn, blind to load and cache."""

    def __init__(self, *, seed: int = 0) -> None:
        self._turn = 0

    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int:
        position = self._turn % len(replicas)
        self._turn += 1
        return position


class LeastOutstanding:
    """Fewest unfinished requests: what a gateway can do with no signal from the engines."""

    def __init__(self, *, seed: int = 0) -> None:
        self._rotation = _Rotation()

    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int:
        return self._rotation.best([(replica.outstanding, 0) for replica in replicas])


class LeastKV:
    """Lowest KV-cache usage (then fewest outstanding): steers long prompts away from full caches."""

    def __init__(self, *, seed: int = 0) -> None:
        self._rotation = _Rotation()

    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int:
        return self._rotation.best([(replica.kv_usage, replica.outstanding) for replica in replicas])


class LongestPrefix:
    """Longest cached prefix (then fewest outstanding): maximal reuse, no regard for queues."""

    def __init__(self, *, seed: int = 0) -> None:
        self._rotation = _Rotation()

    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int:
        hashes = request.block_hashes
        return self._rotation.best(
            [(-replica.cached_prefix_tokens(hashes), replica.outstanding) for replica in replicas]
        )


class PrefixLoad:
    """Cached prefix tokens minus a load penalty, both in prompt tokens of prefill work.

    score = cached_prefix_tokens - outstanding x mean_uncached, where mean_uncached is the
    running mean of the prompt tokens earlier requests had to prefill on the replica this
    router chose (their prompt minus the prefix cached there). Each queued request is thus
    priced at the prefill work it typically brings, so a long cached prefix wins until the
    replica holding it has more queued work than the prefix saves. The first request, with
    no history, prices a queued request at its own prompt length.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self._rotation = _Rotation()
        self._uncached_tokens = 0
        self._routed = 0

    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int:
        hashes = request.block_hashes
        cached = [replica.cached_prefix_tokens(hashes) for replica in replicas]
        penalty = self._uncached_tokens / self._routed if self._routed else float(request.prompt_len)
        keys = [
            (replica.outstanding * penalty - hit, replica.outstanding)
            for hit, replica in zip(cached, replicas, strict=True)
        ]
        position = self._rotation.best(keys)
        self._uncached_tokens += request.prompt_len - cached[position]
        self._routed += 1
        return position


class RouterFactory(Protocol):
    """Every router takes `seed` (only `random` uses it), so the registry has one signature."""

    def __call__(self, *, seed: int = 0) -> Router: ...


ROUTERS: Mapping[str, RouterFactory] = MappingProxyType(
    {
        "random": RandomRouter,
        "round_robin": RoundRobin,
        "least_outstanding": LeastOutstanding,
        "least_kv": LeastKV,
        "prefix": LongestPrefix,
        "prefix_load": PrefixLoad,
    }
)


def make_router(name: str, *, seed: int = 0) -> Router:
    """A fresh router by registry name; unknown names raise ValueError listing the known ones."""
    try:
        factory = ROUTERS[name]
    except KeyError:
        raise ValueError(f"unknown router {name!r}; known: {', '.join(sorted(ROUTERS))}") from None
    return factory(seed=seed)
