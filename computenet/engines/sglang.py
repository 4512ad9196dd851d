"""The SGLang adapter: `python -m sglang.launch_server` and SGLang's `sglang:*` metrics.

SGLang must run from the same interpreter (it has no console script of its own
worth relying on), so the command starts with `sys.executable`.
"""

from __future__ import annotations

import sys

from .base import EngineLoad, LaunchSpec, args_to_flags, has_arg
from .metrics import mean, sample_values, total


def parse_sglang_metrics(text: str) -> EngineLoad:
    """Load from SGLang's /metrics (`token_usage` is already a 0..1 fraction)."""
    values = sample_values(text)
    return EngineLoad(
        running=total(values, "sglang:num_running_reqs"),
        waiting=total(values, "sglang:num_queue_reqs"),
        kv_cache_usage=mean(values, "sglang:token_usage"),
        prompt_tokens_total=total(values, "sglang:prompt_tokens_total"),
        generation_tokens_total=total(values, "sglang:generation_tokens_total"),
    )


class SglangAdapter:
    """Starts `sglang.launch_server`; `--tp-size` follows the GPU count unless args set it."""

    name: str = "sglang"
    health_path: str = "/health"
    metrics_path: str = "/metrics"

    def command(self, spec: LaunchSpec) -> list[str]:
        argv = [sys.executable, "-m", "sglang.launch_server", "--model-path", spec.source]
        argv += ["--host", spec.host, "--port", str(spec.port), "--served-model-name", spec.served_name]
        argv += args_to_flags(spec.args)
        if spec.gpus > 1 and not has_arg(spec.args, "tp_size", "tensor_parallel_size"):
            argv += ["--tp-size", str(spec.gpus)]
        return argv

    def parse_metrics(self, text: str) -> EngineLoad:
        return parse_sglang_metrics(text)
