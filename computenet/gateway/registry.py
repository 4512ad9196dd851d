"""Where the gateway learns which replicas serve which deployment.

`EndpointRegistry` is the in-process `EndpointSink` the control plane publishes to
(and what `computenet gateway --upstream` fills with static upstreams). Lookups
happen on every request, so everything a request needs — the parsed origin of each
replica, the per-model list — is built on publish (rare) and read as one dictionary
access (often).

A deployment's replicas are kept by role: `upstreams` take whole requests (`server`,
or a disaggregated deployment's own `router`); `prefill` and `decode` replicas of a
deployment with no router are paired by the gateway itself (see `disagg.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from computenet.api import Endpoint, PolicySpec

from .upstream import Origin


@dataclass(frozen=True, slots=True)
class Upstream:
    """One place an attempt can go: a replica, or a provider's API."""

    replica: str  # the key for load, breakers and the x-computenet-replica header
    origin: Origin
    backend: str  # "deployment/<name>" or "provider/<name>"
    endpoint: str  # the replica name, or the provider's model name
    region: str
    # e.g. the provider's Authorization; kept out of repr so that no log line can show it
    headers: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)
    model: str | None = None  # the name this upstream serves; a body naming another is rewritten
    engine: str = ""  # the engine behind it (its metrics names, its KV block hashes); "" for providers
    kv_events: str | None = None  # where the engine publishes KV events, if it does
    kv_events_replay: str | None = None
    role: str = "server"  # the deployment role it runs: server, router, prefill or decode


PAIRED_ROLES = frozenset({"prefill", "decode"})


@dataclass(frozen=True, slots=True)
class Published:
    model: str
    policy: PolicySpec | str  # a preset name, or a pipeline
    upstreams: tuple[Upstream, ...]  # replicas that take whole requests: `server`, or a PD group's `router`
    prefill: tuple[Upstream, ...] = ()
    decode: tuple[Upstream, ...] = ()

    @property
    def disaggregated(self) -> bool:
        """Prefill/decode replicas with no router of their own in front: the gateway pairs them."""
        return not self.upstreams and bool(self.prefill or self.decode)

    @property
    def every_upstream(self) -> tuple[Upstream, ...]:
        return self.upstreams + self.prefill + self.decode


class EndpointRegistry:
    def __init__(self, region_of: Callable[[Endpoint], str] | None = None) -> None:
        self._deployments: dict[str, Published] = {}
        self._by_model: dict[str, tuple[str, ...]] = {}
        self._region_of = region_of or (lambda e: e.region or e.pool)
        self._listeners: list[Callable[[], None]] = []

    async def publish(
        self, deployment: str, endpoints: Sequence[Endpoint], *, model: str, policy: PolicySpec | str
    ) -> None:
        self.publish_now(deployment, endpoints, model=model, policy=policy)

    def publish_now(
        self, deployment: str, endpoints: Sequence[Endpoint], *, model: str, policy: PolicySpec | str
    ) -> None:
        """`publish` for callers outside the event loop (static upstreams given on the command line)."""
        upstreams = tuple(
            Upstream(
                replica=e.replica,
                origin=Origin.parse(e.url),
                backend=f"deployment/{deployment}",
                endpoint=e.replica,
                region=self._region_of(e),
                model=model,  # what the replicas answer to; a Route's public name is rewritten to it
                engine=e.engine,
                kv_events=e.kv_events,
                kv_events_replay=e.kv_events_replay,
                role=e.role,
            )
            for e in endpoints
        )
        self._deployments[deployment] = Published(
            model,
            policy,
            tuple(u for u in upstreams if u.role not in PAIRED_ROLES),
            prefill=tuple(u for u in upstreams if u.role == "prefill"),
            decode=tuple(u for u in upstreams if u.role == "decode"),
        )
        self._rebuild()

    async def withdraw(self, deployment: str) -> None:
        self.withdraw_now(deployment)

    def withdraw_now(self, deployment: str) -> None:
        """`withdraw` for callers that follow another source synchronously (the control feed)."""
        self._deployments.pop(deployment, None)
        self._rebuild()

    def deployment(self, name: str) -> Published | None:
        return self._deployments.get(name)

    def deployments_of(self, model: str) -> tuple[str, ...]:
        """Deployments serving `model` (the name their replicas answer to), by name."""
        return self._by_model.get(model, ())

    def upstreams(self) -> list[Upstream]:
        """Every published replica's upstream, whatever its role."""
        return [u for pub in self._deployments.values() for u in pub.every_upstream]

    def replicas(self) -> set[str]:
        """The key of every published upstream."""
        return {u.replica for pub in self._deployments.values() for u in pub.every_upstream}

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _rebuild(self) -> None:
        by_model: dict[str, list[str]] = {}
        for name in sorted(self._deployments):
            by_model.setdefault(self._deployments[name].model, []).append(name)
        self._by_model = {model: tuple(names) for model, names in by_model.items()}
        for listener in self._listeners:
            listener()
