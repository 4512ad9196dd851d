"""Routers for `computenet sim replay`: the gateway's routing presets plus the fleet simulator's own.

The point of replaying a trace through the simulated fleet is to learn how the
gateway would route it, so every gateway preset (`random`, `round-robin`,
`least-request`, `power-of-two`, `prefix`, `precise-prefix`) runs the gateway's own
pipeline through an adapter. At each arrival the adapter writes what the gateway
would know into a `RoutingState`: each replica's unfinished requests as this
gateway's in-flight count, its running and waiting requests and KV usage as a
fresh scrape, and — standing in for the index the gateway builds from the
engines' KV events — the blocks each replica's cache really holds. The
simulator's routers fill in the other names; where a name is taken by the
gateway, the simulator's version is there as `sim_<name>`.

The approximate index of each replica is sized to that replica's KV cache, as an
operator would set it. With `gateways` > 1 arrivals take turns over that many
gateway replicas, each with its own approximate index and session table (the
precise index is built from the engines' events, so all of them share it); the
in-flight counts stay the fleet's, so the comparison isolates the prefix state.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import cast

from computenet.api.routing import LEGACY_PRESETS
from computenet.engines.base import EngineLoad
from computenet.engines.sim.routers import ROUTERS, ReplicaView, Router
from computenet.engines.sim.scheduler import SimRequest
from computenet.gateway.routing.pipeline import RoutingPolicy, RoutingRequest, RoutingState
from computenet.gateway.routing.presets import PRESETS, build_pipeline

ENGINE = "sim"


@dataclass(frozen=True, slots=True)
class _Replica:
    replica: str
    region: str = ""
    engine: str = ENGINE


class _FleetCache:
    """The blocks each replica holds, read from the fleet: what a complete KV-event index would say."""

    def __init__(self) -> None:
        self.views: dict[str, ReplicaView] = {}

    def match(self, block_hashes: Sequence[Hashable]) -> dict[str, int]:
        hashes = cast(Sequence[int], block_hashes)  # the fleet's own requests' hashes: always ints
        found = {name: view.cached_prefix_blocks(hashes) for name, view in self.views.items()}
        return {name: depth for name, depth in found.items() if depth}

    def __contains__(self, block_hash: object) -> bool:
        hashes = [cast(int, block_hash)]
        return any(view.cached_prefix_blocks(hashes) for view in self.views.values())


class GatewayRouter:
    """A gateway `RoutingPolicy` as a fleet `Router`."""

    def __init__(self, policy: RoutingPolicy, model: str, *, seed: int = 0) -> None:
        self.policy, self.model = policy, model
        self._cache = _FleetCache()
        self.state = RoutingState(kv=self._cache, rng=random.Random(seed))
        self._replicas: dict[int, _Replica] = {}
        self._prefilling: list[tuple[SimRequest, str, int]] = []  # charged prefill, no first token yet

    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int | None:
        self._first_tokens()
        candidates = [self._observe(view) for view in replicas]
        blocks = request.block_hashes
        routing = RoutingRequest(
            model=self.model,
            text_blocks=blocks,
            engine_blocks={ENGINE: blocks},
        )
        if replicas:  # a fleet's replicas are alike: each index holds what one replica's cache can
            self.state.approx.capacity_blocks = replicas[0].kv_blocks
        chosen = self.policy.pick(routing, candidates, self.state)
        if chosen is None:  # every replica filtered out: the gateway answers 503
            return None
        self.policy.routed(routing, chosen, self.state)
        if routing.prefill_tokens:
            self._prefilling.append((request, chosen.replica, routing.prefill_tokens))
        return candidates.index(chosen)

    def _first_tokens(self) -> None:
        """What the forwarder does when a response's first token arrives: its prefill is no longer ahead."""
        if not self._prefilling:
            return
        pending = []
        for request, replica, tokens in self._prefilling:
            if request.first_token_s is None and request.finish_s is None:
                pending.append((request, replica, tokens))
            else:
                self.state.board.end_prefill(replica, tokens)
        self._prefilling = pending

    def _observe(self, view: ReplicaView) -> _Replica:
        replica = self._replicas.get(view.index)
        if replica is None:
            replica = self._replicas[view.index] = _Replica(f"replica-{view.index}")
        board = self.state.board
        board.of(replica.replica).in_flight = view.outstanding
        board.record_scrape(
            replica.replica,
            EngineLoad(running=view.running, waiting=view.waiting, kv_cache_usage=view.kv_usage),
        )
        self._cache.views[replica.replica] = view
        return replica


class GatewayReplicas:
    """Several gateway replicas in front of one fleet, taking arrivals in turn (a round-robin L4 balancer)."""

    def __init__(self, routers: Sequence[Router]) -> None:
        self.routers = routers
        self._turn = 0

    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int | None:
        router = self.routers[self._turn % len(self.routers)]
        self._turn += 1
        return router.choose(request, replicas)


def _gateway_factory(name: str, model: str) -> Callable[[int], Router]:
    return lambda seed: GatewayRouter(build_pipeline(name), model, seed=seed)


def _sim_factory(name: str) -> Callable[[int], Router]:
    return lambda seed: ROUTERS[name](seed=seed)


def router_factories(model: str) -> Mapping[str, Callable[[int], Router]]:
    """Every `--router` name: the gateway's presets (and their old names), then the simulator's."""
    factories = {name: _gateway_factory(name, model) for name in (*PRESETS, *LEGACY_PRESETS)}
    for name in ROUTERS:
        factories[f"sim_{name}" if name in factories else name] = _sim_factory(name)
    return MappingProxyType(factories)


def make_router(name: str, *, model: str, seed: int = 0, gateways: int = 1) -> Router:
    """A router by `--router` name, behind `gateways` gateway replicas; ValueError listing the known
    names when there is none."""
    factories = router_factories(model)
    if name not in factories:
        raise ValueError(f"--router: unknown router {name!r}; known: {', '.join(sorted(factories))}")
    if gateways < 1:
        raise ValueError(f"--gateways must be at least 1, got {gateways}")
    if gateways == 1:
        return factories[name](seed)
    return GatewayReplicas([factories[name](seed + i) for i in range(gateways)])
