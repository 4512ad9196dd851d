"""Reading an engine's Prometheus text exposition into plain numbers.

Every adapter needs the same thing from a scrape: the value of a few series,
added up over their label sets (one per model, engine core or TP rank). The
parsing lives here once so the vLLM, SGLang and sim adapters stay a table of
metric names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families


class MetricsParseError(ValueError):
    """The scraped text is not valid Prometheus exposition."""


def sample_values(text: str) -> dict[str, list[float]]:
    """Every sample's value grouped by sample name (`vllm:prompt_tokens_total`, not the family name).

    The parser strips `_total` from counter family names; sample names keep it, so
    callers look series up exactly as they appear on the wire.
    """
    values: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values.setdefault(sample.name, []).append(float(sample.value))
    except ValueError as exc:
        raise MetricsParseError(f"engine metrics are not Prometheus text: {exc}") from exc
    return values


def sample_sums(text: str) -> dict[str, float]:
    """Samples summed by sample name over all their label sets (meant for gauges and counters)."""
    return {name: sum(values) for name, values in sample_values(text).items()}


def total(values: Mapping[str, Sequence[float]], *names: str) -> float:
    """Sum of the first of `names` present (later names are older spellings); 0 when none is."""
    for name in names:
        if name in values:
            return float(sum(values[name]))
    return 0.0


def mean(values: Mapping[str, Sequence[float]], *names: str) -> float:
    """Mean of the first of `names` present: for fractions reported once per engine core or rank."""
    for name in names:
        series = values.get(name)
        if series:
            return float(sum(series)) / len(series)
    return 0.0
