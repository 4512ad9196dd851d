"""The sim's /metrics under vLLM's names, so one parser and one dashboard serve both.

Each app owns its `CollectorRegistry` (no global registry), which keeps several
sims in one test process apart. Gauges are read from the engine at scrape time
rather than pushed, so they can never drift from the engine's real state.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# vLLM's own bucket boundaries, so histograms from sim and vLLM replicas aggregate.
TTFT_BUCKETS_SECONDS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS_SECONDS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS_SECONDS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

_LABELS = ("model_name",)


class SimMetrics:
    """The vLLM-named collectors of one sim app, all labelled with the served model name."""

    def __init__(
        self,
        model_name: str,
        running: Callable[[], float],
        waiting: Callable[[], float],
        kv_cache_usage: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry()
        self._model_name = model_name
        self._gauge("vllm:num_requests_running", "Requests being processed.", running)
        self._gauge("vllm:num_requests_waiting", "Requests waiting for a slot.", waiting)
        self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 means full.", kv_cache_usage)
        self._prompt_tokens = self._counter("vllm:prompt_tokens", "Prefilled prompt tokens.")
        self._generation_tokens = self._counter("vllm:generation_tokens", "Generated tokens.")
        self._success = Counter(
            "vllm:request_success",
            "Finished requests.",
            [*_LABELS, "finished_reason"],
            registry=self.registry,
        )
        self._ttft = self._histogram("vllm:time_to_first_token_seconds", TTFT_BUCKETS_SECONDS)
        self._itl = self._histogram("vllm:inter_token_latency_seconds", ITL_BUCKETS_SECONDS)
        self._e2e = self._histogram("vllm:e2e_request_latency_seconds", E2E_BUCKETS_SECONDS)

    def observe_first_token(self, prompt_tokens: int, ttft_s: float) -> None:
        self._prompt_tokens.inc(prompt_tokens)
        self._ttft.observe(ttft_s)

    def observe_token(self, inter_token_s: float | None) -> None:
        """One generated token; `inter_token_s` is None for the first (it has a TTFT instead)."""
        self._generation_tokens.inc()
        if inter_token_s is not None:
            self._itl.observe(inter_token_s)

    def observe_finished(self, finish_reason: str, e2e_s: float) -> None:
        self._success.labels(self._model_name, finish_reason).inc()
        self._e2e.observe(e2e_s)

    def _gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        Gauge(name, doc, _LABELS, registry=self.registry).labels(self._model_name).set_function(read)

    def _counter(self, name: str, doc: str) -> Counter:
        return Counter(name, doc, _LABELS, registry=self.registry).labels(self._model_name)

    def _histogram(self, name: str, buckets: tuple[float, ...]) -> Histogram:
        doc = name.removeprefix("vllm:").replace("_", " ")
        family = Histogram(name, doc, _LABELS, registry=self.registry, buckets=buckets)
        return family.labels(self._model_name)
