"""Preemption plans: which node, which victims, the priority rule, and a state left as it was."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from computenet.scheduler.frag import TargetWorkload
from computenet.scheduler.framework import Scheduler
from computenet.scheduler.inventory import Gpu, Inventory, Node, Taint
from computenet.scheduler.policies import make_policy
from computenet.scheduler.preemption import (
    PreemptionError,
    PreemptionPlan,
    apply_preemption,
    plan_preemption,
)
from computenet.scheduler.request import Placement, Request
from computenet.scheduler.state import BoolArray, ClusterState


def _node(
    name: str, gpus: int = 1, *, model: str = "A100", cpu: int = 64_000, taints: tuple[Taint, ...] = ()
) -> Node:
    return Node(
        name, cpu, 256_000, tuple(Gpu(i, model, memory_mib=80_000) for i in range(gpus)), taints=taints
    )


def _scheduler(*nodes: Node, policy: str = "bestfit", workload: list[Request] | None = None) -> Scheduler:
    state = ClusterState(Inventory(nodes))
    return Scheduler(state, make_policy(policy, TargetWorkload.typical(workload or [])), seed=0)


def _whole(name: str, priority: int, gpus: int = 1, **kw: Any) -> Request:
    return Request(name, num_gpu=gpus, gpu_milli=1000, priority=priority, **kw)


def _share(name: str, priority: int, milli: int, **kw: Any) -> Request:
    return Request(name, num_gpu=1, gpu_milli=milli, priority=priority, **kw)


def _bind(sched: Scheduler, req: Request, node: int, gpus: tuple[int, ...] = ()) -> Placement:
    placement = Placement(req, node, gpus)
    sched.state.bind(placement)
    return placement


def _plan(sched: Scheduler, req: Request) -> PreemptionPlan:
    result = plan_preemption(sched, req)
    assert result.plan is not None, result.reason
    return result.plan


def _snapshot(state: ClusterState) -> dict[str, Any]:
    """Everything in the state but `version` (which only moves forward), placements with their order."""
    snap = {k: copy.deepcopy(v) for k, v in vars(state).items() if k not in ("version", "inventory")}
    snap["placement_order"] = list(state.placements)
    return snap


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, after[key], err_msg=key)
        elif isinstance(value, dict) and value and isinstance(next(iter(value.values())), np.ndarray):
            assert value.keys() == after[key].keys(), key
            for k in value:
                np.testing.assert_array_equal(value[k], after[key][k], err_msg=f"{key}[{k}]")
        else:
            assert value == after[key], key


# ---- when there is no plan ---------------------------------------------------------------------------


def test_a_request_that_fits_gets_no_plan() -> None:
    sched = _scheduler(_node("n0"))
    result = plan_preemption(sched, _whole("p", 5))
    assert result.plan is None and "without preemption" in result.reason


def test_an_already_bound_request_gets_no_plan() -> None:
    sched = _scheduler(_node("n0"))
    req = _whole("p", 5)
    _bind(sched, req, 0, (0,))
    result = plan_preemption(sched, req)
    assert result.plan is None and "already bound" in result.reason


def test_pods_of_equal_or_higher_priority_are_never_victims() -> None:
    sched = _scheduler(_node("n0"), _node("n1"))
    _bind(sched, _whole("equal", 5), 0, (0,))
    _bind(sched, _whole("higher", 7), 1, (0,))
    result = plan_preemption(sched, _whole("p", 5))
    assert result.plan is None and "below" in result.reason


def test_a_node_needing_an_equal_priority_victim_is_skipped() -> None:
    # Two GPUs are needed; one is held at the preemptor's own priority, so only evicting it would do.
    sched = _scheduler(_node("n0", gpus=2))
    _bind(sched, _whole("equal", 5), 0, (0,))
    _bind(sched, _whole("low", 1), 0, (1,))
    result = plan_preemption(sched, _whole("p", 5, gpus=2))
    assert result.plan is None and "even with all" in result.reason


def test_no_plan_when_evicting_every_lower_pod_is_not_enough() -> None:
    sched = _scheduler(_node("n0"), _node("n1"))
    _bind(sched, _whole("a", 0), 0, (0,))
    _bind(sched, _whole("b", 0), 1, (0,))
    result = plan_preemption(sched, _whole("p", 5, gpus=2))
    assert result.plan is None and "even with all" in result.reason


# ---- ranking of plans --------------------------------------------------------------------------------


def test_fewest_victims_first_even_at_a_higher_victim_priority() -> None:
    sched = _scheduler(_node("n0"), _node("n1"))
    _bind(sched, _share("s1", 0, 500), 0, (0,))
    _bind(sched, _share("s2", 0, 500), 0, (0,))
    _bind(sched, _whole("w", 3), 1, (0,))
    plan = _plan(sched, _whole("p", 10))
    assert (plan.node, plan.victims) == (1, ("w",))


def test_equal_counts_go_to_the_lowest_highest_victim_priority() -> None:
    sched = _scheduler(_node("n0"), _node("n1"))
    _bind(sched, _whole("five", 5), 0, (0,))
    _bind(sched, _whole("three", 3), 1, (0,))
    plan = _plan(sched, _whole("p", 10))
    assert (plan.node, plan.victims) == (1, ("three",))


def test_equal_count_and_priority_go_to_the_least_gpu_evicted() -> None:
    sched = _scheduler(_node("n0"), _node("n1"))
    _bind(sched, _whole("whole", 1), 0, (0,))
    _bind(sched, _share("s1", 1, 500), 1, (0,))
    _bind(sched, _share("s2", 1, 500), 1, (0,))
    plan = _plan(sched, _share("p", 5, 500))
    assert (plan.node, plan.victims) == (1, ("s1",))


def test_full_ties_go_to_the_lowest_node_index() -> None:
    sched = _scheduler(_node("n0"), _node("n1"), _node("n2"))
    for i in range(3):
        _bind(sched, _whole(f"w{i}", 1), i, (0,))
    assert _plan(sched, _whole("p", 5)).node == 0


# ---- the victim set on one node ----------------------------------------------------------------------


def test_a_victim_that_turns_out_unneeded_is_spared() -> None:
    # Lowest priority first evicts `a`, which frees too little CPU, then `b`; `a` is then reprieved.
    sched = _scheduler(_node("n0", cpu=4000))
    _bind(sched, _share("a", 0, 200, cpu_milli=1000), 0, (0,))
    _bind(sched, Request("b", cpu_milli=3000, priority=1), 0)
    plan = _plan(sched, Request("p", cpu_milli=3000, priority=5))
    assert plan.victims == ("b",)


def test_one_whole_gpu_pod_beats_evicting_every_small_sharer() -> None:
    sched = _scheduler(_node("n0", gpus=2))
    for i in range(4):
        _bind(sched, _share(f"s{i}", 0, 250), 0, (0,))
    _bind(sched, _whole("w", 0), 0, (1,))
    plan = _plan(sched, _whole("p", 5))
    assert plan.victims == ("w",) and plan.placement.gpus == (1,)


def test_a_small_sharer_beats_a_whole_gpu_pod_when_it_makes_room() -> None:
    sched = _scheduler(_node("n0", gpus=2))
    _bind(sched, _whole("w", 0), 0, (0,))
    _bind(sched, _share("s1", 0, 500), 0, (1,))
    _bind(sched, _share("s2", 0, 500), 0, (1,))
    plan = _plan(sched, _share("p", 5, 500))
    assert plan.victims == ("s1",) and plan.placement.gpus == (1,)


def test_one_higher_priority_victim_beats_many_lower_ones() -> None:
    # Lowest priority first would evict all four sharers on GPU 0; one eviction on GPU 1 does.
    sched = _scheduler(_node("n0", gpus=2))
    for i in range(4):
        _bind(sched, _share(f"s{i}", 0, 250), 0, (0,))
    _bind(sched, _whole("w", 1), 0, (1,))
    assert _plan(sched, _whole("p", 5)).victims == ("w",)


def test_a_later_node_with_a_better_single_victim_is_found_past_one_that_does_not_fit() -> None:
    # n0 needs one victim at priority 3. On n1, evicting `a` (priority 0) frees too little; `w` (2) will do.
    sched = _scheduler(_node("n0"), _node("n1", gpus=2))
    _bind(sched, _whole("three", 3), 0, (0,))
    _bind(sched, _share("a", 0, 300), 1, (0,))
    _bind(sched, _share("b", 5, 700), 1, (0,))
    _bind(sched, _whole("w", 2), 1, (1,))
    plan = _plan(sched, _whole("p", 10))
    assert (plan.node, plan.victims) == (1, ("w",))


def test_a_victim_of_a_larger_set_that_turns_out_unneeded_is_spared() -> None:
    # No single eviction frees 3000 CPU; greedily `a`, `b`, `c` go, then `a` is spared.
    sched = _scheduler(_node("n0", cpu=4000))
    _bind(sched, Request("a", cpu_milli=1000, priority=0), 0)
    _bind(sched, Request("b", cpu_milli=1500, priority=1), 0)
    _bind(sched, Request("c", cpu_milli=1500, priority=1), 0)
    assert _plan(sched, Request("p", cpu_milli=3000, priority=5)).victims == ("b", "c")


def test_whole_gpu_pods_beat_evicting_every_small_sharer_when_several_gpus_are_needed() -> None:
    sched = _scheduler(_node("n0", gpus=3))
    for i in range(4):
        _bind(sched, _share(f"s{i}", 0, 250), 0, (0,))
    _bind(sched, _whole("w1", 0), 0, (1,))
    _bind(sched, _whole("w2", 0), 0, (2,))
    plan = _plan(sched, _whole("p", 5, gpus=2))
    assert set(plan.victims) == {"w1", "w2"} and plan.placement.gpus == (1, 2)


def test_small_sharers_beat_a_whole_gpu_pod_when_they_free_as_much_for_less() -> None:
    sched = _scheduler(_node("n0", gpus=3))
    _bind(sched, _share("sa", 0, 400), 0, (0,))
    _bind(sched, _share("sb", 0, 400), 0, (1,))
    _bind(sched, _whole("w", 0), 0, (2,))
    plan = _plan(sched, _whole("p", 5, gpus=2))
    assert plan.victims == ("sa", "sb") and plan.placement.gpus == (0, 1)


def test_only_nodes_the_policy_filters_accept_are_candidates() -> None:
    # n0 needs one eviction but has the wrong GPU model, n1 is tainted; n2 needs two evictions.
    sched = _scheduler(
        _node("n0", model="T4"), _node("n1", taints=(Taint("dedicated", "infer"),)), _node("n2")
    )
    _bind(sched, _whole("t4", 0, gpu_types=frozenset({"T4"})), 0, (0,))
    _bind(sched, _whole("tainted", 0, tolerations=()), 1, (0,))
    _bind(sched, _share("s1", 0, 500), 2, (0,))
    _bind(sched, _share("s2", 0, 500), 2, (0,))
    plan = _plan(sched, _whole("p", 5, gpu_types=frozenset({"A100"})))
    assert (plan.node, set(plan.victims)) == (2, {"s1", "s2"})


@dataclass
class _CountingFilter:
    """Passes every node and counts the runs: what a plan costs, in passes over the cluster."""

    runs: int = 0
    name: str = "counting"

    def feasible(self, state: ClusterState, req: Request) -> BoolArray:
        self.runs += 1
        return np.ones(state.node_count, dtype=bool)


def test_once_a_single_victim_will_do_the_other_nodes_cost_no_filter_run() -> None:
    # n0 makes room by evicting `a0` (priority 2). Every other node could make room only by evicting its
    # priority-3 pod or two pods, and no such plan can rank better: the search must not run the filters.
    sched = _scheduler(*(_node(f"n{i}", cpu=4000) for i in range(60)))
    _bind(sched, Request("a0", cpu_milli=2000, priority=2), 0)
    _bind(sched, Request("b0", cpu_milli=2000, priority=9), 0)
    for i in range(1, 60):
        _bind(sched, Request(f"x{i}", cpu_milli=1000, priority=0), i)
        _bind(sched, Request(f"z{i}", cpu_milli=1000, priority=3), i)
        _bind(sched, Request(f"y{i}", cpu_milli=2000, priority=9), i)
    counting = _CountingFilter()
    sched.policy.filters = (*sched.policy.filters, counting)
    plan = _plan(sched, Request("p", cpu_milli=2000, priority=5))
    assert (plan.node, plan.victims) == (0, ("a0",))
    assert counting.runs == 2  # "fits nowhere as it stands", then n0 with a0 gone


# ---- purity ------------------------------------------------------------------------------------------


def _busy_cluster(policy: str) -> tuple[Scheduler, list[Request]]:
    """Three 2-GPU nodes, full but for 500 milli on n2's GPU 0."""
    pods = [
        (_whole("w1", 0, gpus=2), 0, (0, 1)),
        (_whole("w0", 1, deployment="d", cpu_milli=2000), 1, (0,)),
        (_share("s0", 0, 300, cpu_milli=1000), 1, (1,)),
        (_share("s2", 1, 700), 1, (1,)),
        (_share("s1", 2, 500, deployment="d"), 2, (0,)),
        (_whole("w2", 3), 2, (1,)),
    ]
    requests = [req for req, _, _ in pods]
    sched = _scheduler(
        _node("n0", gpus=2), _node("n1", gpus=2), _node("n2", gpus=2), policy=policy, workload=requests
    )
    for req, node, gpus in pods:
        _bind(sched, req, node, gpus)
    return sched, requests


@pytest.mark.parametrize("policy", ["utilization", "stability", "random"])
@pytest.mark.parametrize(
    "req",
    [
        _whole("p", 2, gpus=2),
        _share("q", 9, 900),
        _share("t4", 9, 900, gpu_types=frozenset({"T4"})),  # room once evicted, but filtered out
        _whole("big", 9, gpus=4),
        _whole("low", 0),
    ],
    ids=lambda r: r.name,
)
def test_planning_leaves_the_state_and_the_rng_as_they_were(policy: str, req: Request) -> None:
    sched, _ = _busy_cluster(policy)
    before = _snapshot(sched.state)
    version = sched.state.version.copy()
    rng = copy.deepcopy(sched.rng.bit_generator.state)
    plan_preemption(sched, req)
    _assert_same(before, _snapshot(sched.state))
    assert (sched.state.version >= version).all()
    assert sched.rng.bit_generator.state == rng


def test_versions_only_move_forward_so_scorer_caches_stay_sound() -> None:
    sched, _ = _busy_cluster("utilization")
    before = sched.state.version.copy()
    plan = _plan(sched, _share("q", 9, 900))
    after = sched.state.version
    assert (after >= before).all() and after[plan.node] > before[plan.node]


def test_decisions_after_planning_match_a_scheduler_that_never_planned() -> None:
    planned, _ = _busy_cluster("utilization")
    fresh, _ = _busy_cluster("utilization")
    _plan(planned, _share("q", 9, 900))
    for name in ("s0", "s1"):
        planned.state.unbind(name)
        fresh.state.unbind(name)
    for req in (_share("x", 0, 300), _share("y", 0, 200), _whole("z", 0)):
        assert planned.place(req).placement == fresh.place(req).placement


def test_the_same_seed_gives_the_same_plan() -> None:
    sched = _scheduler(_node("n0", gpus=4), policy="random")
    for i in range(4):
        _bind(sched, _share(f"s{i}", 0, 600), 0, (i,))
    for i in range(4):
        _bind(sched, _share(f"t{i}", 0, 400), 0, (i,))
    req = _share("p", 5, 300)
    assert plan_preemption(sched, req, seed=3) == plan_preemption(sched, req, seed=3)


# ---- applying a plan ---------------------------------------------------------------------------------


def test_applying_evicts_the_victims_binds_the_preemptor_and_hands_back_the_evicted() -> None:
    sched = _scheduler(_node("n0", gpus=2))
    victim = _bind(sched, _whole("w", 0), 0, (0,))
    keep = _bind(sched, _whole("k", 9), 0, (1,))
    plan = _plan(sched, _whole("p", 5))
    evicted = apply_preemption(sched.state, plan)
    assert evicted == (victim,)
    assert sched.state.placements == {"k": keep, "p": plan.placement}
    assert sched.state.node_pods[0] == {"k", "p"}


def test_a_stale_plan_is_refused_and_nothing_is_evicted() -> None:
    sched = _scheduler(_node("n0", cpu=4000))
    victim = _bind(sched, Request("v", cpu_milli=3000, priority=0), 0)
    plan = _plan(sched, Request("p", cpu_milli=3500, priority=5))
    _bind(sched, Request("x", cpu_milli=1000, priority=9), 0)  # the state moved since the plan
    before = _snapshot(sched.state)
    with pytest.raises(PreemptionError, match="no longer fits"):
        apply_preemption(sched.state, plan)
    _assert_same(before, _snapshot(sched.state))
    assert sched.state.placements["v"] == victim


def test_a_plan_whose_victim_is_gone_is_refused() -> None:
    sched = _scheduler(_node("n0"))
    _bind(sched, _whole("w", 0), 0, (0,))
    plan = _plan(sched, _whole("p", 5))
    sched.state.unbind("w")
    with pytest.raises(PreemptionError, match="no longer bound"):
        apply_preemption(sched.state, plan)
    assert "p" not in sched.state.placements


def test_a_plan_evicting_an_equal_priority_pod_is_refused() -> None:
    sched = _scheduler(_node("n0"))
    _bind(sched, _whole("w", 5), 0, (0,))
    req = _whole("p", 5)
    plan = PreemptionPlan(0, ("w",), Placement(req, 0, (0,)))
    with pytest.raises(PreemptionError, match="not below"):
        apply_preemption(sched.state, plan)
    assert set(sched.state.placements) == {"w"}
