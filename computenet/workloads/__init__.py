"""Workloads: reading and generating request traces, replaying them, and summarising the latencies.

Pure tools that import nothing else of ours, so benchmarks, the scheduler's
evaluator, the simulator and the CLI can all share them (an import-linter
contract keeps it so).
"""

from __future__ import annotations

from .prompts import prompt_text
from .replay import ReplayError, base_url, discover_model, replay
from .stats import RequestResult, active_span_s, cached_hit_rate, percentile, render_table, summarize
from .synthetic import LengthDist, gamma, poisson
from .traces import TraceError, TraceRequest, read_azure, read_mooncake, read_trace, select, write_mooncake

__all__ = [
    "LengthDist",
    "ReplayError",
    "RequestResult",
    "TraceError",
    "TraceRequest",
    "active_span_s",
    "base_url",
    "cached_hit_rate",
    "discover_model",
    "gamma",
    "percentile",
    "poisson",
    "prompt_text",
    "read_azure",
    "read_mooncake",
    "read_trace",
    "render_table",
    "replay",
    "select",
    "summarize",
    "write_mooncake",
]
