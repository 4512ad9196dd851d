"""From a public model name to the ordered backends a request may try.

A `Route` resource names targets (weighted) and fallbacks (ordered); a model served
by deployments with no Route gets an implicit one over those deployments. Plans are
built when routes, providers or endpoints change, so a lookup on the request path is
one dictionary access.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from computenet.api import PolicySpec, Price, Provider, RateLimits, Route, Target

from .registry import EndpointRegistry, Upstream
from .routing.pipeline import RoutingPolicy
from .routing.presets import build_pipeline
from .upstream import Origin

FREE = Price()


class ConfigError(ValueError):
    """Routes or providers that cannot be served; the message names the resource and field."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    kind: str  # "Route" or "Provider"
    name: str
    message: str  # names the resource, the field and the fix
    kept: bool = False  # a Route still served as it was before this change


@dataclass(frozen=True, slots=True)
class Backend:
    label: str  # "deployment/<name>" or "provider/<name>"
    deployment: str | None  # replicas come from the registry at request time
    upstream: Upstream | None  # a provider model: one fixed upstream
    price: Price
    weight: int = 1


@dataclass(frozen=True, slots=True)
class RoutePlan:
    model: str
    pipeline: RoutingPolicy  # built once per plan: it keeps the plan's round-robin turn
    targets: tuple[Backend, ...]
    fallbacks: tuple[Backend, ...]
    timeout_s: float
    retries: int
    limits: RateLimits | None
    max_price: Price  # the dearest backend: what a budget reserves before the answer is known

    def order(self, rng: random.Random) -> list[Backend]:
        """Targets in a weighted-random order (weight 0: only after the others), then fallbacks."""
        targets = list(self.targets)
        if len(targets) > 1:
            # Efraimidis-Spirakis: sort by u^(1/w), a weighted shuffle in one pass.
            targets.sort(key=lambda b: rng.random() ** (1 / b.weight) if b.weight else -1.0, reverse=True)
        return targets + list(self.fallbacks)


def provider_upstreams(provider: Provider, environ: Mapping[str, str] | None = None) -> dict[str, Upstream]:
    """One upstream per model the provider lists, with its key read from where the spec says."""
    spec = provider.spec
    headers: list[tuple[bytes, bytes]] = []
    if spec.api_key is not None:
        headers.append((b"Authorization", b"Bearer " + _read_secret(provider).encode()))
    headers += [(k.encode(), v.encode()) for k, v in spec.headers.items()]
    try:
        origin = Origin.parse(spec.base_url)
    except ValueError as exc:
        raise ConfigError(
            f"Provider {provider.name!r} spec.baseUrl: {exc}; give https://host[:port]/v1"
        ) from None
    # The base URL usually ends in /v1 and request paths start with it: keep one.
    origin = Origin(origin.scheme, origin.host, origin.port, origin.base_path.removesuffix("/v1"))
    return {
        m.name: Upstream(
            replica=f"{provider.name}:{m.name}",
            origin=origin,
            backend=f"provider/{provider.name}",
            endpoint=m.name,
            region=spec.region,
            headers=tuple(headers),
            model=m.name,
        )
        for m in spec.models
    }


def _read_secret(provider: Provider) -> str:
    ref = provider.spec.api_key
    assert ref is not None
    where = f"Provider {provider.name!r} spec.apiKey"
    if ref.from_env is not None:
        value = os.environ.get(ref.from_env)
        if not value:
            raise ConfigError(f"{where}.fromEnv: environment variable {ref.from_env} is not set; export it")
        return value.strip()
    assert ref.from_file is not None
    try:
        return Path(ref.from_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{where}.fromFile: cannot read {ref.from_file}: {exc.strerror}") from exc


class RouteTable:
    def __init__(self, registry: EndpointRegistry, *, region: str | None = None) -> None:
        self.registry = registry
        self.region = region  # the gateway's own: its pipelines prefer replicas there
        self._explicit: dict[str, RoutePlan] = {}  # by public model
        self._by_route: dict[str, RoutePlan] = {}  # by Route name: the last good plan of each
        self._policies: dict[str, PolicySpec] = {}  # by Route name: the policy spec its plan was built from
        self._implicit: dict[str, RoutePlan] = {}
        registry.on_change(self._rebuild_implicit)
        self._rebuild_implicit()

    def configure(
        self, routes: Iterable[Route], providers: Iterable[Provider], *, strict: bool = True
    ) -> list[ConfigProblem]:
        """Replace the declared routes, and say which Routes and Providers cannot be served.

        `strict` (a file given to `computenet gateway`): any problem raises ConfigError and
        changes nothing. Otherwise (the store of `computenet up`, which changes under a
        running gateway) every valid route is served, and a broken one keeps serving its
        last good version if it had one; the caller reports the problems as status.
        """
        problems: list[ConfigProblem] = []
        upstreams: dict[str, dict[str, Upstream]] = {}
        broken: set[str] = set()
        prices: dict[tuple[str, str], Price] = {}
        for provider in providers:
            try:
                upstreams[provider.name] = provider_upstreams(provider)
            except ConfigError as exc:
                problems.append(ConfigProblem("Provider", provider.name, str(exc)))
                broken.add(provider.name)
                continue
            for m in provider.spec.models:
                prices[(provider.name, m.name)] = m.price
        plans: dict[str, RoutePlan] = {}
        by_route: dict[str, RoutePlan] = {}
        policies: dict[str, PolicySpec] = {}
        for route in routes:
            old = self._by_route.get(route.name)
            try:
                plan, policy = self._plan(route, upstreams, broken, prices), route.spec.policy
            except ConfigError as exc:
                problems.append(ConfigProblem("Route", route.name, str(exc), kept=old is not None))
                if old is None:
                    continue
                plan, policy = old, self._policies[route.name]
            else:
                # Every store change re-applies every Route. An unchanged one keeps its plan, or its
                # pipeline's state (round-robin turn, approximate prefix index) would start over.
                if (
                    old is not None
                    and self._policies[route.name] == policy
                    and old == replace(plan, pipeline=old.pipeline)
                ):
                    plan = old
            plans[plan.model] = by_route[route.name] = plan
            policies[route.name] = policy
        if strict and problems:
            raise ConfigError("; ".join(p.message for p in problems))
        self._explicit, self._by_route, self._policies = plans, by_route, policies
        return problems

    def _plan(
        self,
        route: Route,
        upstreams: Mapping[str, Mapping[str, Upstream]],
        broken: set[str],
        prices: Mapping[tuple[str, str], Price],
    ) -> RoutePlan:
        targets = tuple(
            self._backend(route, t, "targets", i, upstreams, broken, prices)
            for i, t in enumerate(route.spec.targets)
        )
        fallbacks = tuple(
            self._backend(route, t, "fallbacks", i, upstreams, broken, prices)
            for i, t in enumerate(route.spec.fallbacks)
        )
        return RoutePlan(
            model=route.public_model,
            pipeline=build_pipeline(route.spec.policy, region=self.region),
            targets=targets,
            fallbacks=fallbacks,
            timeout_s=route.spec.timeout_seconds,
            retries=route.spec.retries,
            limits=route.spec.limits,
            max_price=_dearest(b.price for b in targets + fallbacks),
        )

    def replicas(self) -> set[str]:
        """The key of every upstream a request may reach now: replicas and provider models."""
        declared = {
            b.upstream.replica
            for plan in self._explicit.values()
            for b in plan.targets + plan.fallbacks
            if b.upstream is not None
        }
        return declared | self.registry.replicas()

    def lookup(self, model: str) -> RoutePlan | None:
        return self._explicit.get(model) or self._implicit.get(model)

    def models(self) -> list[str]:
        return sorted({*self._explicit, *self._implicit})

    def candidates(self, backend: Backend) -> tuple[Upstream, ...]:
        if backend.upstream is not None:
            return (backend.upstream,)
        assert backend.deployment is not None
        published = self.registry.deployment(backend.deployment)
        return published.upstreams if published is not None else ()

    def _backend(
        self,
        route: Route,
        target: Target,
        field: str,
        index: int,
        upstreams: Mapping[str, Mapping[str, Upstream]],
        broken: set[str],
        prices: Mapping[tuple[str, str], Price],
    ) -> Backend:
        where = f"Route {route.name!r} spec.{field}[{index}]"
        if target.deployment is not None:
            return Backend(target.label, target.deployment, None, target.price or FREE, target.weight)
        assert target.provider is not None and target.model is not None
        if target.provider in broken:
            raise ConfigError(
                f"{where}.provider: Provider {target.provider!r} cannot be used; see its status"
            )
        models = upstreams.get(target.provider)
        if models is None:
            raise ConfigError(f"{where}.provider: no Provider named {target.provider!r}; apply it first")
        upstream = models.get(target.model)
        if upstream is None:
            known = ", ".join(sorted(models)) or "none"
            raise ConfigError(
                f"{where}.model: Provider {target.provider!r} lists no model {target.model!r} "
                f"(it lists: {known}); add it under the provider's spec.models"
            )
        price = target.price or prices[(target.provider, target.model)]
        return Backend(target.label, None, upstream, price, target.weight)

    def _rebuild_implicit(self) -> None:
        plans: dict[str, RoutePlan] = {}
        for model in self.registry.models():
            names = self.registry.deployments_of(model)
            first = self.registry.deployment(names[0])
            backends = tuple(Backend(f"deployment/{n}", n, None, FREE) for n in names)
            plans[model] = RoutePlan(
                model=model,
                pipeline=build_pipeline(first.policy if first is not None else None, region=self.region),
                targets=backends,
                fallbacks=(),
                timeout_s=600.0,
                retries=2,
                limits=None,
                max_price=FREE,
            )
        self._implicit = plans


def _dearest(prices: Iterable[Price]) -> Price:
    best = FREE
    for price in prices:
        if price.input + price.output > best.input + best.output:
            best = price
    return best
