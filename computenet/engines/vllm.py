"""The vLLM adapter: `vllm serve` and vLLM's `vllm:*` metrics.

The sim engine speaks the same metric names, so `parse_vllm_metrics` is shared
with `SimAdapter` rather than copied.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import EngineLoad, LaunchSpec, args_to_flags, has_arg, weights_ref
from .metrics import Sample, SeriesReader, latest, mean, split_label, total

# Names from vllm/v1/metrics/loggers.py; the `gpu_` spellings are vLLM's before 0.10.
_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_LORA_INFO = "vllm:lora_requests_info"
_CACHE_INFO = "vllm:cache_config_info"  # CacheConfig.metrics_info(): every value a label, as a string
_SERIES = SeriesReader(
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    _LORA_INFO,
    _CACHE_INFO,
    *_KV_USAGE,
    *_QUERIES,
    *_HITS,
)


def parse_vllm_metrics(text: str) -> EngineLoad:
    """Load from vLLM's /metrics; KV usage and prefix-cache counters fall back to pre-0.10 names.

    The hit rate is the lifetime one (hits over queries); a router after the recent
    rate takes differences of the two counters between scrapes.
    """
    samples = _SERIES.read(text)
    queries, hits = total(samples, *_QUERIES), total(samples, *_HITS)
    lora = latest(samples, _LORA_INFO)
    return EngineLoad(
        running=total(samples, "vllm:num_requests_running"),
        waiting=total(samples, "vllm:num_requests_waiting"),
        kv_cache_usage=mean(samples, *_KV_USAGE),
        prompt_tokens_total=total(samples, "vllm:prompt_tokens_total"),
        generation_tokens_total=total(samples, "vllm:generation_tokens_total"),
        lora_adapters=_lora_adapters(lora),
        max_lora=_max_lora(lora),
        prefix_cache_queries_total=queries,
        prefix_cache_hits_total=hits,
        prefix_cache_hit_rate=hits / queries if queries > 0 else None,
        kv_capacity_tokens=_kv_capacity_tokens(samples.get(_CACHE_INFO, ())),
    )


def _kv_capacity_tokens(info: Sequence[Sample]) -> float:
    """Tokens the KV cache holds, from `vllm:cache_config_info`: num_gpu_blocks x block_size.

    vLLM exports one sample per engine core (label `engine`); data-parallel cores
    each own a cache, so they add up. A core that has not allocated its cache yet
    says `num_gpu_blocks="None"`: then the whole figure is unknown (0), not a part
    of it, which would make the replica look smaller than it is.
    """
    by_engine: dict[str, int] = {}
    for sample in info:
        labels = sample.labels
        blocks, size = labels.get("num_gpu_blocks", ""), labels.get("block_size", "")
        if not (blocks.isdigit() and size.isdigit()):
            return 0.0
        by_engine[labels.get("engine", "")] = int(blocks) * int(size)
    return float(sum(by_engine.values()))


def _lora_adapters(info: Sample | None) -> frozenset[str]:
    """Adapters named in `vllm:lora_requests_info`, whose labels vLLM rewrites every step.

    Every label set it ever saw stays exported, its value the time it was last set,
    so only the newest sample (see `latest`) says what is loaded now.
    """
    if info is None:
        return frozenset()
    return frozenset(split_label(info, "running_lora_adapters") + split_label(info, "waiting_lora_adapters"))


def _max_lora(info: Sample | None) -> int:
    value = info.labels.get("max_lora", "") if info is not None else ""
    return int(value) if value.isdigit() else 0


class VllmAdapter:
    """Starts `vllm serve`; tensor parallelism follows the replica's GPU count unless args set it."""

    name: str = "vllm"
    health_path: str = "/health"
    metrics_path: str = "/metrics"

    def command(self, spec: LaunchSpec) -> list[str]:
        argv = ["vllm", "serve", weights_ref(spec.source), "--host", spec.host, "--port", str(spec.port)]
        argv += ["--served-model-name", spec.served_name, *args_to_flags(spec.args)]
        if spec.gpus > 1 and not has_arg(spec.args, "tensor_parallel_size"):
            argv += ["--tensor-parallel-size", str(spec.gpus)]
        return argv

    def parse_metrics(self, text: str) -> EngineLoad:
        return parse_vllm_metrics(text)
