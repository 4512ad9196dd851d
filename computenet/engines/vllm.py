"""The vLLM adapter: `vllm serve` and vLLM's `vllm:*` metrics.

The sim engine speaks the same metric names, so `parse_vllm_metrics` is shared
with `SimAdapter` rather than copied.
"""

from __future__ import annotations

from .base import EngineLoad, LaunchSpec, args_to_flags, has_arg
from .metrics import mean, sample_values, total


def parse_vllm_metrics(text: str) -> EngineLoad:
    """Load from vLLM's /metrics; KV usage falls back to the pre-v1 `gpu_cache_usage_perc` name."""
    values = sample_values(text)
    return EngineLoad(
        running=total(values, "vllm:num_requests_running"),
        waiting=total(values, "vllm:num_requests_waiting"),
        kv_cache_usage=mean(values, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        prompt_tokens_total=total(values, "vllm:prompt_tokens_total"),
        generation_tokens_total=total(values, "vllm:generation_tokens_total"),
    )


class VllmAdapter:
    """Starts `vllm serve`; tensor parallelism follows the replica's GPU count unless args set it."""

    name: str = "vllm"
    health_path: str = "/health"
    metrics_path: str = "/metrics"

    def command(self, spec: LaunchSpec) -> list[str]:
        argv = ["vllm", "serve", spec.source, "--host", spec.host, "--port", str(spec.port)]
        argv += ["--served-model-name", spec.served_name, *args_to_flags(spec.args)]
        if spec.gpus > 1 and not has_arg(spec.args, "tensor_parallel_size"):
            argv += ["--tensor-parallel-size", str(spec.gpus)]
        return argv

    def parse_metrics(self, text: str) -> EngineLoad:
        return parse_vllm_metrics(text)
