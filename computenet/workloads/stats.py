"""Per-request latency results and the one summary every replay prints.

Real-time replays (`computenet bench replay`) and virtual-time ones (the
simulator) measure the same things, so both hand `RequestResult`s to
`summarize` and get the same JSON shape and the same table: comparisons
across engines, clocks and commits are then a diff of two documents.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)
LATENCY_KEYS = ("ttft_s", "tpot_s", "itl_s", "e2e_s")


@dataclass
class RequestResult:
    """What one request did, as the client saw it; times in seconds.

    `sent_s` is when it was sent, from the start of the run; `send_lag_s` how late that was
    against its schedule; `cached_tokens` the prompt tokens the server reported served from
    its prefix cache (None when it does not say).
    """

    ok: bool
    ttft_s: float | None
    e2e_s: float | None
    output_tokens: int
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None
    prompt_tokens: int = 0
    sent_s: float = 0.0
    send_lag_s: float = 0.0
    cached_tokens: int | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """`{"mean", "p50", "p90", "p99"}`, all None for no values."""
    ordered = sorted(values)
    out: dict[str, float | None] = {"mean": sum(ordered) / len(ordered) if ordered else None}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(ordered, q)
    return out


def tpot_s(result: RequestResult) -> float | None:
    """Time per output token after the first: (e2e - ttft) / (output_tokens - 1)."""
    if not result.ok or result.output_tokens < 2 or result.ttft_s is None or result.e2e_s is None:
        return None
    return (result.e2e_s - result.ttft_s) / (result.output_tokens - 1)


def active_span_s(results: Iterable[RequestResult]) -> float:
    """From the first send to the last completion; 0 when nothing completed."""
    results = list(results)
    ends = [r.sent_s + r.e2e_s for r in results if r.ok and r.e2e_s is not None]
    if not ends:
        return 0.0
    return max(ends) - min(r.sent_s for r in results)


def cached_hit_rate(results: Iterable[RequestResult]) -> float | None:
    """Prompt tokens served from the prefix cache over all prompt tokens, when the server reports it."""
    reported = [r for r in results if r.ok and r.cached_tokens is not None and r.prompt_tokens > 0]
    prompt = sum(r.prompt_tokens for r in reported)
    if not prompt:
        return None
    return sum(r.cached_tokens or 0 for r in reported) / prompt


def summarize(
    results: Sequence[RequestResult],
    *,
    duration_s: float,
    wall_s: float,
    prefix_hit_rate: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary document; rates are over `duration_s` (first send to last completion)."""
    done = [r for r in results if r.ok]
    samples: dict[str, list[float]] = {
        "ttft_s": [r.ttft_s for r in done if r.ttft_s is not None],
        "tpot_s": [t for t in map(tpot_s, done) if t is not None],
        "itl_s": [gap for r in done for gap in r.itl_s],
        "e2e_s": [r.e2e_s for r in done if r.e2e_s is not None],
    }
    summary: dict[str, Any] = {"requests": len(results), "completed": len(done)}
    summary["failed"] = len(results) - len(done)
    summary |= {key: distribution(samples[key]) for key in LATENCY_KEYS}
    summary["throughput_rps"] = _rate(len(done), duration_s)
    summary["output_tokens_per_s"] = _rate(sum(r.output_tokens for r in done), duration_s)
    summary["prefix_hit_rate"] = prefix_hit_rate
    summary["wall_s"] = wall_s
    summary["errors"] = dict(Counter(r.error or "unknown error" for r in results if not r.ok).most_common())
    return summary | dict(extra or {})


def _rate(amount: float, duration_s: float) -> float | None:
    return amount / duration_s if duration_s > 0 else None


def render_table(summary: Mapping[str, Any]) -> str:
    """A fixed-width table of a `summarize` document, latencies in milliseconds."""
    lines = [f"{'':<12}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}"]
    for key, label in zip(LATENCY_KEYS, ("TTFT", "TPOT", "ITL", "E2E"), strict=True):
        row = summary[key]
        cells = "".join(f"{_ms(row[name]):>10}" for name in ("mean", *(f"p{q}" for q in PERCENTILES)))
        lines.append(f"{label + ' (ms)':<12}{cells}")
    lines.append("")
    lines += _facts(summary)
    for message, count in summary["errors"].items():
        lines.append(f"  {count:>6} x {message}")
    return "\n".join(lines)


_STANDARD_KEYS = frozenset(
    (
        *LATENCY_KEYS,
        "requests",
        "completed",
        "failed",
        "throughput_rps",
        "output_tokens_per_s",
        "prefix_hit_rate",
        "wall_s",
        "errors",
    )
)


def _facts(summary: Mapping[str, Any]) -> list[str]:
    hit_rate = summary["prefix_hit_rate"]
    facts = [
        ("requests", str(summary["requests"])),
        ("completed", str(summary["completed"])),
        ("failed", str(summary["failed"])),
        ("throughput", _number(summary["throughput_rps"], " req/s")),
        ("output tok/s", _number(summary["output_tokens_per_s"], "")),
        ("prefix hit rate", "-" if hit_rate is None else f"{hit_rate * 100:.1f} %"),
        ("wall time", _number(summary["wall_s"], " s")),
    ]
    facts += [(key, _value(value)) for key, value in summary.items() if key not in _STANDARD_KEYS]
    lines = [f"{label:<18}{value}" for label, value in facts]
    if summary["errors"]:
        lines.append("errors:")
    return lines


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _number(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
