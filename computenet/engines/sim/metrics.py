"""The sim's /metrics under vLLM's names, so one parser and one dashboard serve both.

Each app owns its `CollectorRegistry` (no global registry), which keeps several
sims in one test process apart. Load gauges and the prefix-cache and preemption
counters are read from the engine core at scrape time rather than pushed, so
they can never drift from its real state; latency histograms are observed by the
driver as it hands tokens out. `computenet_sim_step_lag_seconds` is the sim's
own health: how late each step's tokens left against the simulated schedule.
A replica with `--kv-transfer-config` also reports its KV pulls under NixlConnector's
names (`vllm:nixl_xfer_time_seconds`, `vllm:nixl_bytes_transferred`), and every replica
says where its prompt tokens' KV came from (`vllm:prompt_tokens_by_source`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .core import EngineCore

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
LAG_BUCKETS_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# NixlConnector's transfer-time buckets (vllm/distributed/kv_transfer/kv_connector/v1/metrics.py).
XFER_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0)
XFER_BUCKETS_BYTES = tuple(float(2**power) for power in range(16, 36, 2))  # 64 KiB .. 16 GiB

_LABELS = ("model_name",)


class _CoreCollector(Collector):
    """Families computed from the engine core on every scrape."""

    def __init__(self, model_name: str, core: EngineCore, cache_info: Mapping[str, str]) -> None:
        self._model_name = model_name
        self._core = core
        self._cache_info = dict(cache_info)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        core = self._core
        yield self._family(
            GaugeMetricFamily, "vllm:num_requests_running", "Requests in the batch.", core.num_running
        )
        yield self._family(
            GaugeMetricFamily, "vllm:num_requests_waiting", "Requests queued.", core.num_waiting
        )
        yield self._family(
            GaugeMetricFamily, "vllm:kv_cache_usage_perc", "KV-cache usage, 1 is full.", core.kv.usage
        )
        queries = "Prefix cache queries, in queried prompt tokens."
        yield self._family(CounterMetricFamily, "vllm:prefix_cache_queries", queries, core.kv.query_tokens)
        hits = "Prefix cache hits, in prompt tokens found cached."
        yield self._family(CounterMetricFamily, "vllm:prefix_cache_hits", hits, core.kv.hit_tokens)
        preempted = "Requests preempted (recomputed) for lack of KV blocks."
        yield self._family(CounterMetricFamily, "vllm:num_preemptions", preempted, core.scheduler.preemptions)
        yield self._by_source(core)
        info = GaugeMetricFamily(
            "vllm:cache_config_info", "Cache configuration.", labels=list(self._cache_info)
        )
        info.add_metric(list(self._cache_info.values()), 1.0)
        yield info

    def _by_source(self, core: EngineCore) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "vllm:prompt_tokens_by_source",
            "Prompt tokens by where their KV came from: computed here, this cache, or another engine.",
            labels=[*_LABELS, "source"],
        )
        for source, value in core.scheduler.prompt_tokens_by_source().items():
            family.add_metric([self._model_name, source], float(value))
        return family

    def _family(
        self, kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, doc: str, value: float
    ) -> GaugeMetricFamily | CounterMetricFamily:
        family = kind(name, doc, labels=list(_LABELS))
        family.add_metric([self._model_name], float(value))
        return family


class SimMetrics:
    """The vLLM-named collectors of one sim app, all labelled with the served model name."""

    def __init__(
        self, model_name: str, core: EngineCore, cache_info: Mapping[str, str], *, kv_transfer: bool = False
    ) -> None:
        self.registry = CollectorRegistry()
        self._model_name = model_name
        self.registry.register(_CoreCollector(model_name, core, cache_info))
        self._prompt_tokens = self._counter("vllm:prompt_tokens", "Prefilled prompt tokens.")
        self.generation_tokens = self._counter("vllm:generation_tokens", "Generated tokens.")
        self._success = Counter(
            "vllm:request_success",
            "Finished requests.",
            [*_LABELS, "finished_reason"],
            registry=self.registry,
        )
        self.ttft = self._histogram("vllm:time_to_first_token_seconds", TTFT_BUCKETS_SECONDS)
        self.itl = self._histogram("vllm:inter_token_latency_seconds", ITL_BUCKETS_SECONDS)
        self._e2e = self._histogram("vllm:e2e_request_latency_seconds", E2E_BUCKETS_SECONDS)
        self.step_lag = self._histogram("computenet_sim_step_lag_seconds", LAG_BUCKETS_SECONDS)
        self._xfer_time: Histogram | None = None
        self._xfer_bytes: Histogram | None = None
        if kv_transfer:
            self._xfer_time = self._histogram("vllm:nixl_xfer_time_seconds", XFER_BUCKETS_SECONDS)
            self._xfer_bytes = self._histogram("vllm:nixl_bytes_transferred", XFER_BUCKETS_BYTES)

    def observe_kv_transfer(self, seconds: float, nbytes: float) -> None:
        """One prompt's KV pulled from a prefill replica."""
        if self._xfer_time is not None and self._xfer_bytes is not None:
            self._xfer_time.observe(seconds)
            self._xfer_bytes.observe(nbytes)

    def observe_first_token(self, prompt_tokens: int, ttft_s: float) -> None:
        self._prompt_tokens.inc(prompt_tokens)
        self.ttft.observe(ttft_s)

    def observe_finished(self, finish_reason: str, e2e_s: float) -> None:
        self._success.labels(self._model_name, finish_reason).inc()
        self._e2e.observe(e2e_s)

    def _counter(self, name: str, doc: str) -> Counter:
        return Counter(name, doc, _LABELS, registry=self.registry).labels(self._model_name)

    def _histogram(self, name: str, buckets: tuple[float, ...]) -> Histogram:
        doc = name.removeprefix("vllm:").replace("_", " ")
        family = Histogram(name, doc, _LABELS, registry=self.registry, buckets=buckets)
        return family.labels(self._model_name)


def cache_config_info(core: EngineCore) -> dict[str, str]:
    """`vllm:cache_config_info` labels, spelled as vLLM's `CacheConfig.metrics_info()` spells them."""
    config = core.config
    return {
        "block_size": str(config.block_size),
        "cache_dtype": "auto",
        "calculate_kv_scales": "False",
        "cpu_offload_gb": "0",
        "enable_prefix_caching": str(config.enable_prefix_caching),
        "gpu_memory_utilization": str(config.gpu_memory_utilization),
        "is_attention_free": "False",
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(core.kv.num_blocks),
        "num_gpu_blocks_override": str(config.num_gpu_blocks_override),
        "prefix_caching_hash_algo": "builtin",
        "sliding_window": "None",
        "swap_space": "0",
        "engine": "0",
    }
