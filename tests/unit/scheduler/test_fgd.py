"""FGD (FGD-PROTOCOL.md section 5): the node and GPU where fragmentation grows least."""

from __future__ import annotations

import numpy as np
import pytest

from computenet.scheduler.choosers import BestFitChooser
from computenet.scheduler.fgd import FgdScorer
from computenet.scheduler.filters import FitFilter
from computenet.scheduler.frag import TargetWorkload, TaskClass
from computenet.scheduler.framework import Policy, Scheduler
from computenet.scheduler.paper import BestFitScorer
from computenet.scheduler.policies import default_filters, make_policy
from computenet.scheduler.request import Request
from computenet.scheduler.state import ClusterState

from .builders import bind, cluster, cpu_pod, node, placed_on, scheduler, share, whole


def one_class(cpu: int, milli: int, count: int) -> TargetWorkload:
    return TargetWorkload([TaskClass(cpu, milli, count, frozenset(), 1.0)])


def deltas(scorer: FgdScorer, state: ClusterState, req: Request) -> dict[str, float]:
    nodes = np.flatnonzero(FitFilter().feasible(state, req))
    return {state.names[i]: float(d) for i, d in zip(nodes, scorer.deltas(state, req, nodes), strict=True)}


def fgd_scheduler(state: ClusterState, workload: TargetWorkload, *, quantized: bool = False) -> Scheduler:
    fgd = FgdScorer(workload, quantized=quantized)
    return Scheduler(state, Policy("fgd", default_filters(), ((fgd, 1.0),), fgd, "first"))


def test_a_share_goes_to_the_node_where_fragmentation_falls() -> None:
    state = cluster(node("fresh", 1), node("used", 1))
    bind(state, share("s", 500), "used", [0])
    workload = one_class(0, 1000, 1)  # everything to come wants a whole GPU
    # used: its 500 left is useless to the workload (F 500) and the share uses it up (F 0): -500
    # fresh: its whole GPU (F 0) would be cut to 500 that nobody can use: +500
    assert deltas(FgdScorer(workload), state, share("r", 500)) == {"fresh": 500.0, "used": -500.0}
    assert placed_on(state, fgd_scheduler(state, workload).decide(share("r", 500))) == "used"


def test_the_paper_score_is_a_truncated_sigmoid_of_minus_delta() -> None:
    state = cluster(node("fresh", 1), node("used", 1))
    bind(state, share("s", 500), "used", [0])
    workload = one_class(0, 1000, 1)
    nodes = np.arange(2)
    quantized = FgdScorer(workload, quantized=True)
    # deltas +500 and -500: floor(100 * sigmoid(-0.5)) = 37 and floor(100 * sigmoid(0.5)) = 62
    assert quantized.score(state, share("r", 500), nodes).tolist() == [37, 62]
    assert quantized.score(state, cpu_pod("c"), nodes).tolist() == [50, 50]  # no change: 50
    assert FgdScorer(workload).score(state, share("r", 500), nodes).tolist() == [-500, 500]


def test_a_share_takes_the_gpu_with_the_least_growth_not_the_tightest() -> None:
    state = cluster(node("n", 2))
    bind(state, share("s", 300), "n", [0])  # GPU 0: 700 free, GPU 1: 1000 free
    workload = one_class(0, 500, 1)
    req = share("r", 300)
    # GPU 0 -> (400, 1000): 400 is too small for a 500 share, F = 400; GPU 1 -> (700, 700): F = 0
    fgd = FgdScorer(workload)
    assert deltas(fgd, state, req) == {"n": 0.0}
    assert fgd.choose(state, req, 0, np.random.default_rng(0)) == (1,)
    assert BestFitChooser().choose(state, req, 0, np.random.default_rng(0)) == (0,)


def test_a_share_takes_the_first_gpu_among_equal_growth() -> None:
    state = cluster(node("n", 4))
    bind(state, share("a", 300), "n", [0])
    bind(state, share("b", 300), "n", [2])
    fgd = FgdScorer(one_class(0, 500, 1))
    # free (700, 1000, 700, 1000): GPUs 1 and 3 both leave no fragment, GPUs 0 and 2 leave 400
    assert fgd.choose(state, share("r", 300), 0, np.random.default_rng(0)) == (1,)
    empty = cluster(node("e", 3))
    assert fgd.choose(empty, share("r", 300), 0, np.random.default_rng(0)) == (0,)


def test_whole_gpus_go_where_they_leave_no_unusable_gpu() -> None:
    state = cluster(node("two", 2), node("four", 4), node("one", 1), node("partly", 3))
    bind(state, share("s", 700), "partly", [0])
    workload = one_class(0, 1000, 2)  # everything to come wants 2 whole GPUs
    # two: (0, 1000) leaves one GPU nobody can use: +1000; four: 3 left, satisfied: 0
    # one: its single GPU was useless and gets used: -1000; partly: (300, 0, 1000) fails the class: +1000
    assert deltas(FgdScorer(workload), state, whole("r", 1)) == {
        "two": 1000.0,
        "four": 0.0,
        "one": -1000.0,
        "partly": 1000.0,
    }
    decision = fgd_scheduler(state, workload).decide(whole("r", 1))
    assert placed_on(state, decision) == "one"


def test_cpu_only_requests_avoid_starving_gpu_classes_of_cpu() -> None:
    state = cluster(node("tight", 1, cpu=4000), node("roomy", 1, cpu=64_000))
    workload = one_class(2000, 1000, 1)
    # on "tight" 1000 CPU would be left, less than the class needs: its free GPU becomes fragmented
    assert deltas(FgdScorer(workload), state, cpu_pod("c", 3000)) == {"tight": 1000.0, "roomy": 0.0}
    assert placed_on(state, fgd_scheduler(state, workload).decide(cpu_pod("c", 3000))) == "roomy"
    assert placed_on(state, scheduler(state, BestFitScorer()).decide(cpu_pod("c", 3000))) == "tight"


def _probes() -> list[Request]:
    return [
        share("p-small", 100),
        share("p-mid", 450, cpu=2000),
        share("p-mem", 300, gpu_mem=30_000),
        whole("p-one", 1, cpu=1000),
        whole("p-two", 2),
        cpu_pod("p-cpu", 8000),
    ]


def test_cached_deltas_match_a_fresh_scorer_after_every_change() -> None:
    rng = np.random.default_rng(3)
    state = cluster(
        node("a", 8, gpu_type="A100", cpu=32_000),
        node("b", 4, gpu_type="A100", cpu=16_000, gpu_mem=40_000),
        node("c", 2, gpu_type="T4", cpu=8000, gpu_mem=16_000),
        node("d", 1, gpu_type="T4", cpu=96_000),
        node("e", 0, cpu=8000),
    )
    arrivals: list[Request] = []
    for i in range(60):
        kind = rng.integers(3)
        if kind == 0:
            arrivals.append(
                share(f"s{i}", int(rng.choice([100, 250, 450, 700])), cpu=int(rng.integers(0, 4)) * 1000)
            )
        elif kind == 1:
            arrivals.append(whole(f"w{i}", int(rng.choice([1, 1, 2, 4])), cpu=1000))
        else:
            arrivals.append(cpu_pod(f"c{i}", int(rng.integers(1, 6)) * 1000))
    workload = TargetWorkload.typical(arrivals)
    sched = fgd_scheduler(state, workload)
    cached = sched.policy.chooser
    assert isinstance(cached, FgdScorer)
    checked = 0
    for step, req in enumerate(arrivals):
        sched.place(req)
        if step == 20:
            state.set_gpu_health(0, 3, False)
        if step == 30:
            state.unbind(next(iter(state.placements)))
        for probe in _probes():
            nodes = np.flatnonzero(FitFilter().feasible(state, probe))
            fresh = FgdScorer(workload)
            assert cached.deltas(state, probe, nodes).tolist() == pytest.approx(
                fresh.deltas(state, probe, nodes).tolist()
            ), (step, probe.name)
            for n in nodes.tolist() if probe.is_share else []:
                rng_ = np.random.default_rng(0)
                assert cached.choose(state, probe, n, rng_) == fresh.choose(state, probe, n, rng_)
            checked += int(nodes.size)
    assert checked > 100 and state.gpu_allocated_milli > 0


def test_fgd_and_utilization_presets_place_by_least_growth() -> None:
    workload = one_class(0, 1000, 1)
    for name in ("fgd", "utilization", "computenet"):
        state = cluster(node("fresh", 1), node("used", 1))
        bind(state, share("s", 500), "used", [0])
        assert (
            placed_on(state, Scheduler(state, make_policy(name, workload)).decide(share("r", 500))) == "used"
        )
