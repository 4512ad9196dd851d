"""The `sim` engine adapter: start the built-in simulator, read its vLLM-named metrics."""

from __future__ import annotations

import sys

from ..base import EngineLoad, LaunchSpec, args_to_flags
from ..vllm import parse_vllm_metrics


class SimAdapter:
    """Runs `python -m computenet.engines.sim`; `source` and `gpus` are ignored (no weights, no GPU)."""

    name: str = "sim"
    health_path: str = "/health"
    metrics_path: str = "/metrics"

    def command(self, spec: LaunchSpec) -> list[str]:
        argv = [sys.executable, "-m", "computenet.engines.sim", "--model", spec.served_name]
        return [*argv, "--host", spec.host, "--port", str(spec.port), *args_to_flags(spec.args)]

    def parse_metrics(self, text: str) -> EngineLoad:
        return parse_vllm_metrics(text)
