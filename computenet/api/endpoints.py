"""The narrow seam between the control plane and the gateway.

The control plane knows which replicas are ready; the gateway must route to them
without importing the control plane. Both import this module: the control plane
publishes `Endpoint`s to an `EndpointSink`, and the gateway's registry is one.
In embedded mode the sink is an in-process object; distributed gateways will read
the same facts from the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .routing import PolicySpec


@dataclass(frozen=True)
class Endpoint:
    """A ready replica's address, and what it serves."""

    replica: str
    deployment: str
    model: str  # the public model name clients put in the `model` field
    url: str  # base URL, without /v1
    role: str = "server"  # server, router, prefill or decode: the gateway pairs prefill with decode
    engine: str = "sim"
    pool: str = "local"
    region: str = ""  # the pool's region: a gateway prefers its own and spills over to others
    kv_events: str | None = None  # the engine's ZMQ KV-event publisher (tcp://host:port), when it has one
    kv_events_replay: str | None = None  # its replay socket, to recover missed events


class EndpointSink(Protocol):
    async def publish(
        self, deployment: str, endpoints: Sequence[Endpoint], *, model: str, policy: PolicySpec | str
    ) -> None:
        """Replace the ready endpoints of one deployment of `model`, routed with `policy`.

        An empty list keeps the model known, so clients get 503 (no capacity), not 404.
        """

    async def withdraw(self, deployment: str) -> None:
        """Forget a deployment that was deleted."""
