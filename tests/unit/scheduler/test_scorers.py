"""ComputeNet's own scorers: binpack, least-allocated, NVLink topology, cost, spread."""

from __future__ import annotations

import pytest

from computenet.scheduler.request import Spread
from computenet.scheduler.scorers import BinpackScorer, CostScorer, LeastAllocatedScorer, TopologyScorer
from computenet.scheduler.spread import SpreadScorer

from .builders import bind, cluster, cpu_pod, node, placed_on, scheduler, scores, share, whole


def test_binpack_prefers_the_fuller_node() -> None:
    state = cluster(node("empty", 4), node("half", 4))
    bind(state, whole("w", 2), "half", [0, 1])
    # GPU in use once a 1-GPU request lands: 1/4 on the empty node, 3/4 on the half-full one
    assert scores(state, BinpackScorer(), whole("r", 1)) == pytest.approx({"empty": 25.0, "half": 75.0})
    assert placed_on(state, scheduler(state, BinpackScorer()).decide(whole("r", 1))) == "half"


def test_binpack_weighs_cpu_for_cpu_only_requests() -> None:
    state = cluster(node("empty", 1, cpu=10_000), node("busy", 1, cpu=10_000))
    bind(state, cpu_pod("c", 5000), "busy")
    assert scores(state, BinpackScorer(), cpu_pod("r", 1000)) == pytest.approx({"empty": 10.0, "busy": 60.0})


def test_least_allocated_prefers_the_emptier_node() -> None:
    state = cluster(node("half", 4), node("empty", 4))
    bind(state, whole("w", 2), "half", [0, 1])
    assert scores(state, LeastAllocatedScorer(), whole("r", 1)) == pytest.approx(
        {"half": 25.0, "empty": 75.0}
    )
    assert placed_on(state, scheduler(state, LeastAllocatedScorer()).decide(whole("r", 1))) == "empty"


def test_topology_prefers_the_island_the_request_fills_exactly() -> None:
    state = cluster(node("big-island", 4, islands=[0, 0, 0, 0]), node("exact", 6, islands=[0, 0, 0, 0, 1, 1]))
    tp2 = whole("tp2", 2, same_island=True)
    # on "exact" the 2-GPU island is filled entirely; on "big-island" half of a 4-GPU island
    assert scores(state, TopologyScorer(), tp2) == pytest.approx({"big-island": 50.0, "exact": 100.0})
    assert placed_on(state, scheduler(state, TopologyScorer()).decide(tp2)) == "exact"


def test_topology_counts_only_free_gpus_of_an_island() -> None:
    state = cluster(node("n", 4, islands=[0, 0, 1, 1]), node("m", 4, islands=[0, 0, 0, 0]))
    bind(state, whole("x", 1), "m", [0])
    # m's island has 3 free GPUs left: a 3-GPU request fills it exactly, while n has no island of 3
    assert scores(state, TopologyScorer(), whole("tp3", 3, same_island=True)) == pytest.approx(
        {"n": 0.0, "m": 100.0}
    )


def test_topology_scores_shares_and_cpu_alike() -> None:
    state = cluster(node("a", 4, islands=[0, 0, 1, 1]), node("b", 2))
    assert set(scores(state, TopologyScorer(), share("s", 500)).values()) == {0.0}
    assert set(scores(state, TopologyScorer(), cpu_pod("c")).values()) == {0.0}


def test_cost_prefers_the_cheaper_node() -> None:
    state = cluster(node("dear", 1, price=3.0), node("cheap", 1, price=1.0), node("mid", 1, price=2.0))
    got = scores(state, CostScorer(), whole("r", 1))
    assert got == pytest.approx({"dear": 0.0, "cheap": 100 * 2 / 3, "mid": 100 / 3})
    assert placed_on(state, scheduler(state, CostScorer()).decide(whole("r", 1))) == "cheap"


def test_cost_scores_unpriced_nodes_alike_and_as_the_cheapest() -> None:
    state = cluster(node("free", 1), node("paid", 1, price=2.0))
    assert scores(state, CostScorer(), whole("r", 1)) == pytest.approx({"free": 100.0, "paid": 0.0})
    unpriced = cluster(node("a", 1), node("b", 1))
    assert scores(unpriced, CostScorer(), whole("r", 1)) == {"a": 0.0, "b": 0.0}


def test_spread_scorer_prefers_zones_with_fewer_replicas() -> None:
    state = cluster(node("a1", 2, zone="a"), node("a2", 2, zone="a"), node("b1", 2, zone="b"))
    bind(state, whole("web-0", 1, deployment="web"), "a1", [0])
    got = scores(state, SpreadScorer(), whole("web-1", 1, deployment="web"))
    assert got["b1"] > got["a2"] > got["a1"]  # other zone first, then another node of the same zone
    assert (
        placed_on(state, scheduler(state, SpreadScorer()).decide(whole("web-1", 1, deployment="web"))) == "b1"
    )


def test_spread_scorer_uses_the_requests_spread_key() -> None:
    state = cluster(node("a1", 2, zone="a"), node("a2", 2, zone="a"), node("b1", 2, zone="b"))
    bind(state, whole("web-0", 1, deployment="web"), "a1", [0])
    bind(state, whole("web-1", 1, deployment="web"), "a1", [1])
    bind(state, whole("web-2", 1, deployment="web"), "b1", [0])
    by_zone = scores(state, SpreadScorer(), whole("web-3", 1, deployment="web"))
    by_node = scores(state, SpreadScorer(), whole("web-3", 1, deployment="web", spread=Spread("node", 5)))
    assert by_zone["b1"] > by_zone["a2"] > by_zone["a1"]  # zone b has 1 replica, zone a 2
    assert by_node["a2"] > by_node["b1"] > by_node["a1"]  # node a2 has none


def test_spread_scorer_ignores_other_deployments_and_requests_without_one() -> None:
    state = cluster(node("a1", 2, zone="a"), node("b1", 2, zone="b"))
    bind(state, whole("web-0", 1, deployment="web"), "a1", [0])
    assert len(set(scores(state, SpreadScorer(), whole("api-0", 1, deployment="api")).values())) == 1
    assert set(scores(state, SpreadScorer(), whole("loose", 1)).values()) == {0.0}
