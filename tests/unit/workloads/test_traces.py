"""Trace readers on the recorded files in data/traces, `select`, and errors that name line and field."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from computenet.workloads import (
    TraceError,
    TraceRequest,
    read_mooncake,
    read_trace,
    select,
    write_mooncake,
)

TRACES = Path(__file__).resolve().parents[3] / "data" / "traces"
MOONCAKE = TRACES / "mooncake_conversation.jsonl"
AZURE = TRACES / "azure_code_2023.csv"


@pytest.fixture(scope="module")
def mooncake() -> list[TraceRequest]:
    return read_mooncake(MOONCAKE)


def _sorted_from_zero(requests: list[TraceRequest]) -> bool:
    arrivals = [r.arrival_s for r in requests]
    return arrivals[0] == 0.0 and arrivals == sorted(arrivals)


def test_mooncake_trace_rows_and_prefix_sharing(mooncake: list[TraceRequest]) -> None:
    assert len(mooncake) == 12031
    assert _sorted_from_zero(mooncake)
    first, last = mooncake[0], mooncake[-1]
    assert (first.input_tokens, first.output_tokens, first.hash_ids) == (6758, 500, tuple(range(14)))
    assert (last.arrival_s, last.input_tokens, last.output_tokens) == (3536.999, 20774, 508)
    assert all(len(r.hash_ids) == -(-r.input_tokens // 512) for r in mooncake)
    # The first three requests share their first block (id 0) and nothing after it.
    assert mooncake[1].hash_ids[0] == mooncake[2].hash_ids[0] == 0
    assert mooncake[1].hash_ids[1] != mooncake[2].hash_ids[1]


def test_mooncake_read_is_fast() -> None:
    start = time.perf_counter()
    read_trace(MOONCAKE)
    assert time.perf_counter() - start < 1.0


def test_azure_trace_rows_relative_to_first() -> None:
    requests = read_trace(AZURE)
    assert len(requests) == 8819
    assert _sorted_from_zero(requests)
    assert (requests[0].input_tokens, requests[0].output_tokens) == (4808, 10)
    assert requests[1].arrival_s == pytest.approx(0.052)
    assert requests[-1].arrival_s == pytest.approx(3435.948056)
    assert (requests[-1].input_tokens, requests[-1].output_tokens) == (549, 173)
    assert all(r.hash_ids == () for r in requests)


def test_select_limit_duration_speedup() -> None:
    requests = [TraceRequest(float(t), 10, 5) for t in range(10)]
    assert [r.arrival_s for r in select(requests, limit=3)] == [0.0, 1.0, 2.0]
    assert [r.arrival_s for r in select(requests, duration_s=2.5)] == [0.0, 1.0, 2.0]
    assert [r.arrival_s for r in select(requests, speedup=2.0, duration_s=2.0)] == [0.0, 0.5, 1.0, 1.5]
    assert len(select(requests, speedup=10.0, limit=20)) == 10
    for bad in ({"speedup": 0.0}, {"limit": -1}, {"duration_s": 0.0}):
        with pytest.raises(ValueError):
            select(requests, **bad)  # type: ignore[arg-type]


def test_unsorted_rows_are_sorted_and_shifted_to_zero(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_mooncake([TraceRequest(5.0, 3, 1), TraceRequest(2.5, 4, 2, (7,))], path)
    requests = read_trace(path)
    assert [(r.arrival_s, r.input_tokens, r.hash_ids) for r in requests] == [(0.0, 4, (7,)), (2.5, 3, ())]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"timestamp": 0, "input_length": "x", "output_length": 1}',
            'line 2: input_length must be a positive integer, got "x"',
        ),
        ('{"timestamp": 0, "input_length": 5}', 'line 2: missing "output_length"'),
        (
            '{"timestamp": -1, "input_length": 5, "output_length": 1}',
            "line 2: timestamp must be a non-negative",
        ),
        (
            '{"timestamp": 0, "input_length": 5, "output_length": 0}',
            "line 2: output_length must be a positive integer, got 0",
        ),
        (
            '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1, "a"]}',
            "line 2: hash_ids must be a list of integers",
        ),
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
    ],
)
def test_malformed_mooncake_names_file_line_and_field(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n' + line + "\n")
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    assert str(caught.value).startswith(f"{path} {expected}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TIMESTAMP,ContextTokens\n", "line 1: missing column GeneratedTokens"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,5,1\nyesterday,5,1\n",
            "line 3: TIMESTAMP must look like",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,-5,1\n",
            'line 2: ContextTokens must be a positive integer, got "-5"',
        ),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,5\n", "line 2: expected 3 columns"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    ],
)
def test_malformed_azure_names_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=expected):
        read_trace(path)


def test_unreadable_and_unknown_inputs(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "missing.jsonl")
    with pytest.raises(TraceError, match=r"mooncake \(JSONL\) and azure \(CSV\)"):
        read_trace(MOONCAKE, fmt="parquet")
    odd = tmp_path / "trace.txt"
    odd.write_text("hello\n")
    with pytest.raises(TraceError, match=r"\.jsonl \(mooncake\) or \.csv \(azure\)"):
        read_trace(odd)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TraceError, match="no requests"):
        read_trace(empty)


def test_content_sniffing_without_suffix(tmp_path: Path) -> None:
    path = tmp_path / "trace"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n')
    assert read_trace(path) == [TraceRequest(0.0, 5, 1)]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,5,1\n")
    assert read_trace(path) == [TraceRequest(0.0, 5, 1)]
