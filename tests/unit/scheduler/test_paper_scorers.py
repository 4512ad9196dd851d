"""The FGD paper's five baselines on cases computed by hand from FGD-PROTOCOL.md section 6.

Resources are normalised by the trace's largest node: 128 vCPU (128000 milli) and 8 GPUs (8000 milli).
"""

from __future__ import annotations

from computenet.scheduler.frag import TargetWorkload
from computenet.scheduler.framework import Scheduler
from computenet.scheduler.paper import (
    BestFitScorer,
    DotProdScorer,
    GpuClusteringScorer,
    GpuPackingScorer,
    RandomScorer,
)
from computenet.scheduler.policies import make_policy
from computenet.scheduler.state import ClusterState

from .builders import bind, cluster, cpu_pod, node, placed_on, scheduler, scores, share, whole


def _cpu_and_gpu() -> ClusterState:
    """'half': 64 of 128 vCPU and 4 GPUs free; 'full': 128 vCPU and 8 GPUs free."""
    state = cluster(node("half", 4, cpu=128_000), node("full", 8, cpu=128_000))
    bind(state, cpu_pod("c", 64_000), "half")
    return state


def test_dotprod_scores_the_truncated_dot_product() -> None:
    state = _cpu_and_gpu()
    req = whole("r", 1, cpu=32_000)
    # half: free (0.5, 0.5) . req (0.25, 0.125) = 0.1875 -> 100 * (1 - 0.1875 / 2) = 90.625 -> 90
    # full: free (1.0, 1.0) . req (0.25, 0.125) = 0.375  -> 100 * (1 - 0.375 / 2)  = 81.25  -> 81
    assert scores(state, DotProdScorer(), req) == {"half": 90.0, "full": 81.0}
    assert placed_on(state, scheduler(state, DotProdScorer()).decide(req)) == "half"


def test_dotprod_ties_nodes_that_differ_below_one_point() -> None:
    state = cluster(node("a", 8, cpu=128_000), node("b", 8, cpu=128_000))
    bind(state, cpu_pod("c", 1000), "a")
    req = whole("r", 1, cpu=1000)
    got = scores(state, DotProdScorer(), req)
    # a: 127/128 * 1/128 + 1 * 1/8 = 0.13275; b: 1/128 + 1/8 = 0.13281; both 100 * (1 - dot / 2) = 93.36
    assert got["a"] == got["b"] == 93.0
    assert placed_on(state, scheduler(state, DotProdScorer(), tie_break="last").decide(req)) == "b"


def test_bestfit_scores_the_least_leftover_highest() -> None:
    state = _cpu_and_gpu()
    req = whole("r", 1, cpu=32_000)
    # half: left (32000/128000, 3000/8000) = (0.25, 0.375) -> s = 0.3125 -> floor(68.75) = 68
    # full: left (96000/128000, 7000/8000) = (0.75, 0.875) -> s = 0.8125 -> floor(18.75) = 18
    assert scores(state, BestFitScorer(), req) == {"half": 68.0, "full": 18.0}
    assert placed_on(state, scheduler(state, BestFitScorer()).decide(req)) == "half"


def test_bestfit_counts_shares_by_their_milli() -> None:
    state = cluster(node("n", 1, cpu=128_000), node("m", 2, cpu=128_000))
    bind(state, share("s", 250), "n", [0])
    req = share("r", 500)
    # n: left (1.0, 250/8000) -> s = 0.515625 -> 48; m: left (1.0, 1500/8000) -> s = 0.59375 -> 40
    assert scores(state, BestFitScorer(), req) == {"n": 48.0, "m": 40.0}


def _clustering() -> ClusterState:
    state = cluster(node("shares", 8), node("mixed", 8), node("empty", 8), node("other", 8), node("small", 4))
    bind(state, share("s1", 500), "shares", [0])
    bind(state, share("s2", 500), "mixed", [0])
    bind(state, whole("w1", 1), "mixed", [1])
    bind(state, whole("w2", 2), "other", [0, 1])
    bind(state, cpu_pod("c"), "empty")  # CPU-only pods belong to no GPU class
    return state


def test_gpuclustering_keeps_a_class_together_then_packs() -> None:
    state = _clustering()
    # base (75 only my class, 50 mine among others, 25 no GPU pods, 0 only others) + floor(25 * used / 8000)
    assert scores(state, GpuClusteringScorer(), share("r", 100)) == {
        "shares": 75 + 1,  # 500 used
        "mixed": 50 + 4,  # 1500 used
        "empty": 25 + 0,
        "other": 0 + 6,  # 2000 used
        "small": 25 + 12,  # a 4-GPU node counts its 4 missing GPUs as used: 4000 of 8000
    }
    assert scores(state, GpuClusteringScorer(), whole("r", 2)) == {
        "shares": 1,
        "mixed": 4,
        "empty": 25,
        "other": 75 + 6,
        "small": 37,
    }
    assert placed_on(state, scheduler(state, GpuClusteringScorer()).decide(share("r", 100))) == "shares"


def test_gpuclustering_scores_cpu_only_requests_zero() -> None:
    assert set(scores(_clustering(), GpuClusteringScorer(), cpu_pod("c")).values()) == {0.0}


def test_gpupacking_case_3_scores_an_untouched_node_by_its_gpu_count() -> None:
    state = cluster(node("one", 1), node("four", 4), node("eight", 8))
    # max(33 - G, G)
    assert scores(state, GpuPackingScorer(), whole("r", 1)) == {"one": 32, "four": 29, "eight": 25}
    assert scores(state, GpuPackingScorer(), share("r", 10)) == {"one": 32, "four": 29, "eight": 25}


def _packing() -> ClusterState:
    state = cluster(node("p70", 8), node("p40", 8), node("tight", 8), node("empty", 8))
    bind(state, share("a", 300), "p70", [0])  # GPU 0 has 700 free
    bind(state, share("b", 600), "p40", [0])  # GPU 0 has 400 free
    bind(state, share("c", 900), "tight", [0])  # GPU 0 has 100 free: too little for the request
    return state


def test_gpupacking_case_1_prefers_the_fullest_used_gpu() -> None:
    state = _packing()
    # case 1: 100 - (free % of the used GPU) / 10; case 2: 50 - 1 fully free GPU; case 3: 33 - 8
    assert scores(state, GpuPackingScorer(), share("r", 200)) == {
        "p70": 93,
        "p40": 96,
        "tight": 49,
        "empty": 25,
    }
    assert placed_on(state, scheduler(state, GpuPackingScorer()).decide(share("r", 200))) == "p40"


def test_gpupacking_case_2_takes_off_one_point_per_fully_free_gpu() -> None:
    state = _packing()
    assert scores(state, GpuPackingScorer(), whole("r", 1))["p70"] == 49
    assert scores(state, GpuPackingScorer(), whole("r", 3))["p70"] == 47
    assert scores(state, GpuPackingScorer(), whole("r", 7))["p70"] == 43
    # a partly used node always beats an untouched one
    assert placed_on(state, scheduler(state, GpuPackingScorer()).decide(whole("r", 2))) == "p70"


def test_gpupacking_scores_cpu_only_requests_zero() -> None:
    assert set(scores(_packing(), GpuPackingScorer(), cpu_pod("c")).values()) == {0.0}


def test_random_scores_every_node_alike_and_the_policy_picks_any_feasible_node() -> None:
    state = cluster(node("a", 1), node("b", 1), node("c", 1), node("full", 1))
    bind(state, whole("w", 1), "full", [0])
    assert set(scores(state, RandomScorer(), share("r", 1)).values()) == {0.0}
    policy = make_policy("random", TargetWorkload([]))
    picked = {
        placed_on(state, Scheduler(state, policy, seed=seed).decide(share("r", 1))) for seed in range(40)
    }
    assert picked == {"a", "b", "c"}


def test_paper_policies_break_ties_in_node_order() -> None:
    for name in ("dotprod", "bestfit", "gpuclustering", "gpupacking", "fgd"):
        state = cluster(node("a", 2), node("b", 2), node("c", 2))
        policy = make_policy(name, TargetWorkload([]))
        picked = {
            placed_on(state, Scheduler(state, policy, seed=seed).decide(share("r", 100)))
            for seed in range(10)
        }
        assert picked == {"a"}, name
