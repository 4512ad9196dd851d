"""The narrow seam between the control plane and the gateway.

The control plane knows which replicas are ready; the gateway must route to them
without importing the control plane. Both import this module: the control plane
publishes `Endpoint`s to an `EndpointSink`, and the gateway's registry is one.
In embedded mode the sink is an in-process object; in distributed mode the leader's
reconciler publishes into the store, the control API serves what it holds, and each
gateway replica follows that over HTTP. `PublishedEndpoints` is what travels: one
deployment's endpoints, and its wire form (camelCase JSON, as every resource is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

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


# Endpoint's fields and their wire names (kv_events -> kvEvents), read once.
_WIRE_NAMES = {f.name: to_camel(f.name) for f in fields(Endpoint)}
_REQUIRED = ("replica", "deployment", "model", "url")


@dataclass(frozen=True)
class PublishedEndpoints:
    """One deployment as the sink last heard it: its model, routing policy and ready endpoints."""

    deployment: str
    model: str
    policy: PolicySpec | str
    endpoints: tuple[Endpoint, ...]

    def to_wire(self) -> dict[str, Any]:
        policy: Any = self.policy
        if isinstance(policy, PolicySpec):
            policy = policy.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {
            "deployment": self.deployment,
            "model": self.model,
            "policy": policy,
            "endpoints": [endpoint_to_wire(e) for e in self.endpoints],
        }

    @classmethod
    def from_wire(cls, data: Any) -> PublishedEndpoints:
        """Read what `to_wire` wrote; ValueError names the field when the data is not that shape."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a published deployment must be an object, got {type(data).__name__}")
        deployment, model = _text(data, "deployment"), _text(data, "model")
        raw = data.get("endpoints")
        if not isinstance(raw, list):
            raise ValueError(f"deployment {deployment!r}: endpoints must be a list")
        policy = data.get("policy")
        try:
            parsed = policy if isinstance(policy, str) else PolicySpec.model_validate(policy)
        except ValidationError as exc:
            raise ValueError(f"deployment {deployment!r}: policy is invalid: {exc}") from None
        return cls(deployment, model, parsed, tuple(endpoint_from_wire(e) for e in raw))


def endpoint_to_wire(endpoint: Endpoint) -> dict[str, Any]:
    return {wire: getattr(endpoint, name) for name, wire in _WIRE_NAMES.items()}


def endpoint_from_wire(data: Any) -> Endpoint:
    if not isinstance(data, Mapping):
        raise ValueError(f"an endpoint must be an object, got {type(data).__name__}")
    for name in _REQUIRED:
        _text(data, name)
    values = {name: data[wire] for name, wire in _WIRE_NAMES.items() if data.get(wire) is not None}
    bad = [_WIRE_NAMES[k] for k, v in values.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"endpoint {data.get('replica')!r}: {', '.join(bad)} must be strings")
    return Endpoint(**values)


def _text(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    return value
