"""The gateway's Prometheus metrics, in a registry owned by one gateway (no globals).

Per-request series are looked up once per label set and kept (`labels()` costs more
than the observation itself); gauges that mirror state the gateway already keeps —
requests in flight, breaker states, queue lengths — are read at scrape time instead
of being updated on every request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1)


class _Series:
    __slots__ = ("cached", "completion", "duration", "prompt", "requests", "ttft")

    def __init__(self, m: GatewayMetrics, model: str, backend: str, tenant: str, code: str) -> None:
        self.requests = m.requests.labels(model, backend, tenant, code)
        self.duration = m.duration.labels(model, backend, tenant)
        self.ttft = m.ttft.labels(model, backend, tenant)
        self.prompt = m.tokens.labels(model, backend, tenant, "prompt")
        self.cached = m.tokens.labels(model, backend, tenant, "cached")
        self.completion = m.tokens.labels(model, backend, tenant, "completion")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "computenet_gateway_requests",
            "Requests answered, by public model, backend, tenant and HTTP status.",
            ["model", "backend", "tenant", "code"],
            registry=r,
        )
        self.errors = Counter(
            "computenet_gateway_errors",
            "Requests that did not succeed, by cause (bad_request, invalid_api_key, rate_limited, "
            "budget_exceeded, shed, no_capacity, upstream_5xx, upstream_429, timeout, client_gone...).",
            ["model", "cause"],
            registry=r,
        )
        self.duration = Histogram(
            "computenet_gateway_request_duration_seconds",
            "Arrival to last byte sent.",
            ["model", "backend", "tenant"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ttft = Histogram(
            "computenet_gateway_time_to_first_token_seconds",
            "Arrival to the first byte of the answer (streams: the first chunk).",
            ["model", "backend", "tenant"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.itl = Histogram(
            "computenet_gateway_inter_token_latency_seconds",
            "Mean gap between chunks of each streamed answer.",
            ["model", "backend"],
            buckets=ITL_BUCKETS_S,
            registry=r,
        )
        self.tokens = Counter(
            "computenet_gateway_tokens",
            "Tokens metered, by kind (prompt, cached, completion).",
            ["model", "backend", "tenant", "kind"],
            registry=r,
        )
        self.attempts = Counter(
            "computenet_gateway_upstream_attempts",
            "Tries sent to backends, by outcome (ok, error).",
            ["backend", "outcome"],
            registry=r,
        )
        self._series: dict[tuple[str, str, str, str], _Series] = {}
        self._itl: dict[tuple[str, str], Any] = {}
        self._errors: dict[tuple[str, str], Any] = {}
        self._attempts: dict[tuple[str, str], Any] = {}

    def series(self, model: str, backend: str, tenant: str, code: int) -> _Series:
        key = (model, backend, tenant, str(code))
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = _Series(self, *key)
        return found

    def error(self, model: str, cause: str) -> None:
        _child(self._errors, self.errors, (model, cause)).inc()

    def attempt(self, backend: str, outcome: str) -> None:
        _child(self._attempts, self.attempts, (backend, outcome)).inc()

    def inter_token(self, model: str, backend: str, seconds: float) -> None:
        _child(self._itl, self.itl, (model, backend)).observe(seconds)

    def add_gauges(self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        """A gauge family computed at scrape time from state the gateway keeps anyway."""
        self.registry.register(_ScrapeGauge(name, doc, label, read))


def _child(cache: dict[tuple[str, str], Any], metric: Any, key: tuple[str, str]) -> Any:
    """`metric.labels(*key)`, looked up once per label set."""
    child = cache.get(key)
    if child is None:
        child = cache[key] = metric.labels(*key)
    return child


class _ScrapeGauge(Collector):
    def __init__(self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        self._name, self._doc, self._label, self._read = name, doc, label, read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._doc, labels=[self._label])
        for key, value in sorted(self._read().items()):
            family.add_metric([key], value)
        yield family
