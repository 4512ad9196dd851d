"""The gateway's Prometheus metrics, in a registry owned by one gateway (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "computenet_requests",
            "Requests answered, by model and HTTP status.",
            ["model", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "computenet_request_duration_seconds",
            "Time from request to last byte sent.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.attempts = Counter(
            "computenet_upstream_attempts",
            "Tries sent to replicas, by outcome.",
            ["model", "outcome"],
            registry=self.registry,
        )
