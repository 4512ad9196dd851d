"""The SGLang adapter: `python -m sglang.launch_server` and SGLang's `sglang:*` metrics.

SGLang must run from the same interpreter (it has no console script of its own
worth relying on), so the command starts with `sys.executable`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .base import EngineLoad, LaunchSpec, args_to_flags, has_arg, weights_ref
from .metrics import Sample, SeriesReader, mean, series, total

# Names from sglang/srt/metrics/collector.py.
_HIT_RATE = "sglang:cache_hit_rate"  # a gauge per TP/DP rank, over the scheduler's last log interval
_CACHED_TOKENS = "sglang:cached_tokens_total"  # newer SGLang only
_LORA_SLOTS = "sglang:lora_pool_slots_total"  # only with --enable-lora
_KV_TOKENS = "sglang:max_total_num_tokens"  # the KV pool's size in tokens, per scheduler (rank)
_SERIES = SeriesReader(
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "sglang:token_usage",
    "sglang:prompt_tokens_total",
    "sglang:generation_tokens_total",
    _HIT_RATE,
    _CACHED_TOKENS,
    _LORA_SLOTS,
    _KV_TOKENS,
)


def parse_sglang_metrics(text: str) -> EngineLoad:
    """Load from SGLang's /metrics (`token_usage` is already a 0..1 fraction).

    SGLang does not name its loaded LoRA adapters, only how many slots it has.
    Prefix-cache counters exist where it counts cached tokens (prompt tokens are
    then the queries); the hit rate prefers its own gauge, which is recent.
    """
    samples = _SERIES.read(text)
    prompt_tokens = total(samples, "sglang:prompt_tokens_total")
    queries = prompt_tokens if _CACHED_TOKENS in samples else 0.0
    hits = total(samples, _CACHED_TOKENS)
    hit_rate = mean(samples, _HIT_RATE) if _HIT_RATE in samples else None
    if hit_rate is None and queries > 0:
        hit_rate = hits / queries
    return EngineLoad(
        running=total(samples, "sglang:num_running_reqs"),
        waiting=total(samples, "sglang:num_queue_reqs"),
        kv_cache_usage=mean(samples, "sglang:token_usage"),
        prompt_tokens_total=prompt_tokens,
        generation_tokens_total=total(samples, "sglang:generation_tokens_total"),
        max_lora=int(max((s.value for s in series(samples, _LORA_SLOTS)), default=0)),
        prefix_cache_queries_total=queries,
        prefix_cache_hits_total=hits,
        prefix_cache_hit_rate=hit_rate,
        kv_capacity_tokens=_kv_capacity_tokens(series(samples, _KV_TOKENS)),
    )


def _kv_capacity_tokens(pools: Sequence[Sample]) -> float:
    """The KV pool's tokens: the ranks of one data-parallel group share a pool (each may report
    it), separate groups each have their own; 0 where SGLang does not say."""
    by_group: dict[str, float] = {}
    for sample in pools:
        group = sample.labels.get("dp_rank", "")
        by_group[group] = max(by_group.get(group, 0.0), sample.value)
    return sum(by_group.values())


class SglangAdapter:
    """Starts `sglang.launch_server`; `--tp-size` follows the GPU count unless args set it."""

    name: str = "sglang"
    health_path: str = "/health"
    metrics_path: str = "/metrics"

    def command(self, spec: LaunchSpec) -> list[str]:
        argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", weights_ref(spec.source)]
        argv += ["--host", spec.host, "--port", str(spec.port), "--served-model-name", spec.served_name]
        argv += args_to_flags(spec.args)
        if spec.gpus > 1 and not has_arg(spec.args, "tp_size", "tensor_parallel_size"):
            argv += ["--tp-size", str(spec.gpus)]
        return argv

    def parse_metrics(self, text: str) -> EngineLoad:
        return parse_sglang_metrics(text)
