"""Routers for `computenet sim replay`: the gateway's own policies plus the fleet simulator's.

The point of replaying a trace through the simulated fleet is to learn how the
gateway would route it, so `round_robin` and `least_outstanding` are the
gateway's implementations (`computenet.gateway.policies.POLICIES`), run through
an adapter: each replica becomes an `Endpoint`, and a `LoadTracker` counts the
requests in flight exactly as the gateway's would (acquired when a request is
routed, released when the fleet reports it finished). The simulator's routers
fill in the other names; where a name is taken by the gateway, the simulator's
version is still there as `sim_<name>`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from computenet.api import Endpoint
from computenet.engines.sim.routers import ROUTERS, ReplicaView, Router
from computenet.engines.sim.scheduler import SimRequest
from computenet.gateway.policies import POLICIES, LoadTracker, RoutingPolicy

DEPLOYMENT = "sim-replay"


class GatewayRouter:
    """A gateway `RoutingPolicy` as a fleet `Router`."""

    def __init__(self, policy: RoutingPolicy, model: str) -> None:
        self.policy, self.model = policy, model
        self.load = LoadTracker()
        self._endpoints: dict[int, Endpoint] = {}

    def choose(self, request: SimRequest, replicas: Sequence[ReplicaView]) -> int:
        candidates = [self._endpoint(replica) for replica in replicas]
        chosen = self.policy.pick(self.model, candidates, self.load)
        position = next(i for i, endpoint in enumerate(candidates) if endpoint is chosen)
        self.load.acquire(chosen.replica)
        return position

    def _endpoint(self, replica: ReplicaView) -> Endpoint:
        """The replica's endpoint, first releasing the requests the fleet has finished since last time."""
        endpoint = self._endpoints.get(replica.index)
        if endpoint is None:
            name = f"replica-{replica.index}"
            endpoint = Endpoint(replica=name, deployment=DEPLOYMENT, model=self.model, url=f"sim://{name}")
            self._endpoints[replica.index] = endpoint
        for _ in range(self.load.outstanding(endpoint.replica) - replica.outstanding):
            self.load.release(endpoint.replica)
        return endpoint


def _gateway_factory(name: str, model: str) -> Callable[[int], Router]:
    return lambda seed: GatewayRouter(POLICIES[name](), model)


def _sim_factory(name: str) -> Callable[[int], Router]:
    return lambda seed: ROUTERS[name](seed=seed)


def router_factories(model: str) -> Mapping[str, Callable[[int], Router]]:
    """Every `--router` name: the gateway's policies first, then the simulator's, by seed."""
    factories = {name: _gateway_factory(name, model) for name in POLICIES}
    for name in ROUTERS:
        factories[f"sim_{name}" if name in factories else name] = _sim_factory(name)
    return MappingProxyType(factories)


def make_router(name: str, *, model: str, seed: int = 0) -> Router:
    """A router by `--router` name; ValueError listing the known names when there is none."""
    factories = router_factories(model)
    if name not in factories:
        raise ValueError(f"--router: unknown router {name!r}; known: {', '.join(sorted(factories))}")
    return factories[name](seed)
