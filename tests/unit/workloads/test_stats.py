"""Percentiles, the summary's JSON shape, and the table."""

from __future__ import annotations

import json

import pytest

from computenet.workloads import (
    RequestResult,
    active_span_s,
    cached_hit_rate,
    percentile,
    render_table,
    summarize,
)

KEYS = [
    "requests", "completed", "failed", "ttft_s", "tpot_s", "itl_s", "e2e_s",
    "throughput_rps", "output_tokens_per_s", "prefix_hit_rate", "wall_s", "errors",
]  # fmt: skip


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0 and percentile([3.0, 1.0, 2.0], 100) == 3.0


def _ok(ttft: float, e2e: float, tokens: int, sent: float = 0.0, **kwargs: object) -> RequestResult:
    return RequestResult(True, ttft, e2e, tokens, [0.01] * max(0, tokens - 1), None, sent_s=sent, **kwargs)  # type: ignore[arg-type]


def test_summary_shape_and_values() -> None:
    results = [
        _ok(0.1, 1.1, 11, sent=0.0, prompt_tokens=100, cached_tokens=50),
        _ok(0.3, 0.3, 1, sent=1.0, prompt_tokens=100, cached_tokens=0),
        RequestResult(False, None, None, 0, [], "HTTP 404: no such model"),
        RequestResult(False, None, None, 0, [], "HTTP 404: no such model"),
    ]
    duration_s = active_span_s(results)
    assert duration_s == pytest.approx(1.3)
    summary = summarize(
        results, duration_s=duration_s, wall_s=2.0, prefix_hit_rate=cached_hit_rate(results), extra={"x": 1}
    )
    assert list(summary) == [*KEYS, "x"]
    assert (summary["requests"], summary["completed"], summary["failed"]) == (4, 2, 2)
    assert summary["ttft_s"]["mean"] == pytest.approx(0.2)
    assert summary["tpot_s"] == {
        "mean": pytest.approx(0.1),
        "p50": pytest.approx(0.1),
        "p90": pytest.approx(0.1),
        "p99": pytest.approx(0.1),
    }
    assert summary["itl_s"]["p99"] == pytest.approx(0.01)
    assert summary["e2e_s"]["p50"] == pytest.approx(0.7)
    assert summary["throughput_rps"] == pytest.approx(2 / 1.3)
    assert summary["output_tokens_per_s"] == pytest.approx(12 / 1.3)
    assert summary["prefix_hit_rate"] == pytest.approx(0.25)
    assert summary["errors"] == {"HTTP 404: no such model": 2}
    json.dumps(summary)


def test_empty_and_all_failed_give_nulls() -> None:
    summary = summarize([RequestResult(False, None, None, 0, [], None)], duration_s=0.0, wall_s=0.5)
    assert summary["ttft_s"] == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert summary["throughput_rps"] is None and summary["prefix_hit_rate"] is None
    assert summary["errors"] == {"unknown error": 1}
    assert cached_hit_rate([_ok(0.1, 0.2, 2)]) is None
    assert summarize([], duration_s=0.0, wall_s=0.0)["requests"] == 0


def test_table_lists_every_row() -> None:
    results = [_ok(0.1, 1.1, 11), RequestResult(False, None, None, 0, [], "timed out after 5 s")]
    table = render_table(summarize(results, duration_s=1.1, wall_s=1.2, extra={"max_send_lag_s": 0.002}))
    for label in ("TTFT (ms)", "TPOT (ms)", "ITL (ms)", "E2E (ms)", "requests", "completed", "failed",
                  "throughput", "output tok/s", "prefix hit rate", "wall time", "max_send_lag_s"):  # fmt: skip
        assert label in table
    assert "100.0" in table  # TTFT in ms
    assert "1 x timed out after 5 s" in table
