"""Where the gateway learns which endpoints serve which model.

`EndpointRegistry` is the in-process `EndpointSink` the control plane publishes to.
Lookups happen on every request, so the per-model view is rebuilt on publish (rare)
and read as one dictionary access (often).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from computenet.api import Endpoint


@dataclass(frozen=True)
class Route:
    model: str
    policy: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class _Published:
    model: str
    policy: str
    endpoints: tuple[Endpoint, ...]


class EndpointRegistry:
    def __init__(self) -> None:
        self._deployments: dict[str, _Published] = {}
        self._routes: dict[str, Route] = {}

    async def publish(
        self, deployment: str, endpoints: Sequence[Endpoint], *, model: str, policy: str
    ) -> None:
        self._deployments[deployment] = _Published(model, policy, tuple(endpoints))
        self._rebuild()

    async def withdraw(self, deployment: str) -> None:
        self._deployments.pop(deployment, None)
        self._rebuild()

    def lookup(self, model: str) -> Route | None:
        return self._routes.get(model)

    def models(self) -> list[str]:
        return sorted(self._routes)

    def _rebuild(self) -> None:
        routes: dict[str, Route] = {}
        for name in sorted(self._deployments):
            pub = self._deployments[name]
            known = routes.get(pub.model)
            # Several deployments may serve one model; the first (by name) sets the policy.
            endpoints = (known.endpoints if known else ()) + pub.endpoints
            routes[pub.model] = Route(pub.model, known.policy if known else pub.policy, endpoints)
        self._routes = routes
