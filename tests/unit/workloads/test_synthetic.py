"""Synthetic arrivals: deterministic per seed, the asked-for rate and burstiness, shared prefixes."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import pytest

from computenet.workloads import LengthDist, gamma, poisson, read_trace, write_mooncake


def _gaps(arrivals: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(arrivals)]


def test_poisson_is_deterministic_and_has_the_rate() -> None:
    first = poisson(20.0, 4000, input_tokens=100, output_tokens=10, seed=7)
    assert first == poisson(20.0, 4000, input_tokens=100, output_tokens=10, seed=7)
    assert first != poisson(20.0, 4000, input_tokens=100, output_tokens=10, seed=8)
    gaps = _gaps([r.arrival_s for r in first])
    assert first[0].arrival_s == 0.0
    assert statistics.fmean(gaps) == pytest.approx(1 / 20.0, rel=0.06)
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.08)
    assert {(r.input_tokens, r.output_tokens) for r in first} == {(100, 10)}


@pytest.mark.parametrize("cv", [0.5, 2.0])
def test_gamma_has_the_rate_and_cv(cv: float) -> None:
    requests = gamma(5.0, cv, 5000, input_tokens=10, output_tokens=10, seed=1)
    gaps = _gaps([r.arrival_s for r in requests])
    assert statistics.fmean(gaps) == pytest.approx(0.2, rel=0.1)
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(cv, rel=0.12)


def test_length_distributions_are_seeded_and_clipped() -> None:
    dist = LengthDist(200.0, cv=1.0)
    requests = poisson(1.0, 3000, input_tokens=dist, output_tokens=LengthDist(1.0, cv=3.0), seed=3)
    inputs = [r.input_tokens for r in requests]
    assert statistics.fmean(inputs) == pytest.approx(200.0, rel=0.1)
    assert min(r.output_tokens for r in requests) >= 1
    assert (
        max(
            r.input_tokens
            for r in poisson(1.0, 500, input_tokens=LengthDist(50, 2.0, max=60), output_tokens=1)
        )
        <= 60
    )
    with pytest.raises(ValueError, match="mean"):
        LengthDist(0.0)


def test_prefix_groups_share_leading_blocks() -> None:
    requests = poisson(
        10.0, 200, input_tokens=300, output_tokens=5, prefix_groups=3, shared_prefix_tokens=1024
    )
    assert all(r.input_tokens == 1324 and len(r.hash_ids) == 3 for r in requests)
    assert {r.hash_ids[:2] for r in requests} == {(0, 1), (2, 3), (4, 5)}
    tails = [r.hash_ids[2] for r in requests]
    assert len(set(tails)) == len(tails) and min(tails) >= 6


def test_without_groups_every_block_is_fresh() -> None:
    requests = poisson(10.0, 50, input_tokens=1000, output_tokens=5)
    ids = [h for r in requests for h in r.hash_ids]
    assert len(ids) == 100 and len(set(ids)) == 100


def test_bad_arguments_raise() -> None:
    for kwargs in ({"rate_rps": 0.0}, {"cv": 0.0}, {"count": -1}):
        args = {"rate_rps": 1.0, "cv": 1.0, "count": 1} | kwargs
        with pytest.raises(ValueError):
            gamma(args["rate_rps"], args["cv"], int(args["count"]), input_tokens=1, output_tokens=1)
    with pytest.raises(ValueError, match="multiple of 512"):
        poisson(1.0, 1, input_tokens=1, output_tokens=1, prefix_groups=2, shared_prefix_tokens=100)
    with pytest.raises(ValueError, match="needs shared_prefix_tokens"):
        poisson(1.0, 1, input_tokens=1, output_tokens=1, prefix_groups=2)


def test_written_trace_reads_back(tmp_path: Path) -> None:
    requests = gamma(3.0, 1.5, 100, input_tokens=LengthDist(700), output_tokens=LengthDist(40), seed=5)
    path = tmp_path / "synthetic.jsonl"
    write_mooncake(requests, path)
    again = read_trace(path)
    assert [(r.input_tokens, r.output_tokens, r.hash_ids) for r in again] == [
        (r.input_tokens, r.output_tokens, r.hash_ids) for r in requests
    ]
    assert [r.arrival_s for r in again] == pytest.approx([r.arrival_s for r in requests], abs=1e-6)
