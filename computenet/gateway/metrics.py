"""The gateway's Prometheus metrics, in a registry owned by one gateway (no globals).

Per-request series are looked up once per label set and kept (`labels()` costs more
than the observation itself); gauges that mirror state the gateway already keeps —
requests in flight, breaker states, queue lengths — are read at scrape time instead
of being updated on every request. So are the routing feeds' series (engine scrapes,
KV events, the KV block index): their objects already count everything, and a
collector that reads them when Prometheus asks adds no work to a scrape or a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .routing.kv_index import KVBlockIndex
from .routing.scrape import EngineScraper

if TYPE_CHECKING:
    from .routing.kv_events import KVEventStats, KVEventSubscriber  # needs the kv-events extra

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
        self.tokenize = Counter(
            "computenet_gateway_engine_tokenize",
            "Prompts a replica's engine tokenized for precise prefix routing (vLLM's /tokenize), "
            "by outcome (ok, error: routed on load alone).",
            ["backend", "outcome"],
            registry=r,
        )
        self._series: dict[tuple[str, str, str, str], _Series] = {}
        self._tokenize: dict[tuple[str, str], Any] = {}
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

    def tokenized(self, backend: str, outcome: str) -> None:
        _child(self._tokenize, self.tokenize, (backend, outcome)).inc()

    def inter_token(self, model: str, backend: str, seconds: float) -> None:
        _child(self._itl, self.itl, (model, backend)).observe(seconds)

    def add_gauges(self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        """A gauge family computed at scrape time from state the gateway keeps anyway."""
        self.registry.register(_ScrapeGauge(name, doc, label, read))

    def add_routing_feeds(self, feeds: RoutingFeeds) -> None:
        """The engine-scrape, KV-event and KV-index series, read from `feeds` at scrape time."""
        self.registry.register(RoutingFeedsCollector(feeds))


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


class RoutingFeeds(Protocol):
    """What feeds the routing signals (the gateway's `SignalFeeds`): read, never changed, by /metrics."""

    @property
    def scraper(self) -> EngineScraper: ...

    @property
    def kv_events(self) -> KVEventSubscriber | None: ...  # None until a replica publishes KV events

    @property
    def index(self) -> KVBlockIndex: ...


# Per replica counters of the KV-event streams: (series, KVEventStats field, help).
_KV_EVENT_COUNTERS = (
    ("kv_events", "events", "KV events applied to the index (live or replayed)."),
    ("kv_event_batches", "batches", "KV-event batches applied to the index (live or replayed)."),
    ("kv_event_gaps", "gaps", "Times the replica's KV-event sequence skipped ahead (batches lost)."),
    ("kv_event_replays", "replays", "KV-event replays answered to the end (the start-up one included)."),
    (
        "kv_event_replay_failures",
        "replay_failures",
        "KV-event replays that timed out or no longer reached back far enough.",
    ),
    (
        "kv_event_resets",
        "resets",
        "Times the replica's blocks were cleared from the index: lost events without a replay, "
        "an engine restart, an unreadable batch.",
    ),
    ("kv_event_decode_errors", "decode_errors", "KV-event messages or batches that could not be read."),
    (
        "kv_event_unkeyed_blocks",
        "unkeyed_blocks",
        "Stored blocks of a vLLM replica that could not be keyed by their token ids (a block size "
        "not a multiple of 16, or a parent never seen): precise-prefix cannot match them.",
    ),
)


class RoutingFeedsCollector(Collector):
    """Engine scrapes per replica, KV-event streams per replica and the KV block index, as they are now.

    Replicas appear with their first scrape or KV-event subscription and vanish with
    them (a counter starts again at 0 for a replica that comes back under its name).
    """

    def __init__(self, feeds: RoutingFeeds) -> None:
        self._feeds = feeds

    def collect(self) -> Iterator[Metric]:
        yield from self._scrapes()
        yield from self._kv_events()
        yield from self._kv_index()

    def _scrapes(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "computenet_gateway_engine_scrape_errors",
            "Failed scrapes of a replica's engine metrics (no answer in time, an HTTP error, unreadable).",
            labels=["endpoint"],
        )
        age = GaugeMetricFamily(
            "computenet_gateway_engine_scrape_age_seconds",
            "Seconds since the replica's engine metrics were last scraped; absent before the first success.",
            labels=["endpoint"],
        )
        stale = GaugeMetricFamily(
            "computenet_gateway_engine_scrape_stale",
            "1 when routing ignores the replica's engine figures (never scraped, or older than the "
            "staleness limit, 2 s by default) and falls back on this gateway's own counts; else 0.",
            labels=["endpoint"],
        )
        board = self._feeds.scraper.board
        now = board.clock()
        for replica in sorted(self._feeds.scraper.tracked()):
            signals = board.get(replica)
            errors.add_metric([replica], signals.scrape_errors_total if signals is not None else 0)
            if signals is not None and signals.scraped_at >= 0:
                age.add_metric([replica], max(0.0, now - signals.scraped_at))
            stale.add_metric([replica], 1.0 if board.engine(replica) is None else 0.0)
        yield from (errors, age, stale)

    def _kv_events(self) -> Iterator[Metric]:
        subscriber = self._feeds.kv_events
        by_replica: dict[str, KVEventStats] = subscriber.replica_stats() if subscriber is not None else {}
        for name, field, doc in _KV_EVENT_COUNTERS:
            family = CounterMetricFamily(f"computenet_gateway_{name}", doc, labels=["endpoint"])
            for replica in sorted(by_replica):
                family.add_metric([replica], getattr(by_replica[replica], field))
            yield family

    def _kv_index(self) -> Iterator[Metric]:
        index = self._feeds.index
        per_replica = GaugeMetricFamily(
            "computenet_gateway_kv_index_blocks",
            "Distinct KV blocks the replica's engine reported holding (GPU), per its KV events.",
            labels=["endpoint"],
        )
        for replica in sorted(index.replicas()):
            per_replica.add_metric([replica], index.blocks(replica))
        yield per_replica
        yield GaugeMetricFamily(
            "computenet_gateway_kv_index_distinct_blocks",
            "Distinct KV block hashes held by at least one replica, in the gateway's KV-event index.",
            value=len(index),
        )
