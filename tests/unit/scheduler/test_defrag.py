"""The defragmenter finds the fewest moves that make a request fit, changes nothing while planning, and
applies a plan all or nothing."""

from __future__ import annotations

import pytest

from computenet.scheduler.defrag import StalePlanError, apply_plan, below_priority, plan_defrag
from computenet.scheduler.framework import Scheduler
from computenet.scheduler.request import Placement, Request, Spread
from computenet.scheduler.state import CapacityError, ClusterState

from .placement_support import assert_unchanged, bind, cluster, node, scheduler, share, snapshot, whole

BIG = whole("big", 4)


def scattered(**pod_kw: object) -> ClusterState:
    """Three 4-GPU nodes and a 2-GPU one, 6 GPUs free but at most 2 on any node: n1 holds only d and e."""
    state = cluster(node("n0", 4), node("n1", 4), node("n2", 4), node("n3", 2))
    for name, at, gpu in (("a", 0, 0), ("b", 0, 1), ("c", 0, 2), ("f", 2, 0), ("g", 2, 1), ("h", 2, 2)):
        bind(state, whole(name, 1), at, (gpu,))
    for name, gpu in (("d", 0), ("e", 1)):
        bind(state, whole(name, 1, **pod_kw), 1, (gpu,))  # type: ignore[arg-type]
    return state


@pytest.mark.parametrize("policy", ["bestfit", "random"])
def test_the_plan_empties_the_node_with_fewest_pods_in_the_way_and_planning_changes_nothing(
    policy: str,
) -> None:
    state = scattered()
    sched = scheduler(state, policy, seed=3)
    assert sched.decide(BIG).placement is None
    before, rng_before = snapshot(state), sched.rng.bit_generator.state
    result = plan_defrag(sched, BIG)
    assert result.plan is not None
    plan = result.plan
    assert plan.target_node == 1
    assert sorted(m.pod for m in plan.moves) == ["d", "e"]
    assert all(m.from_node == 1 and m.to_node != 1 for m in plan.moves)
    assert plan.placement == Placement(BIG, 1, (0, 1, 2, 3))
    assert_unchanged(state, before)
    assert sched.rng.bit_generator.state == rng_before
    assert plan_defrag(sched, BIG) == result  # deterministic: nothing was left behind


def test_apply_plan_moves_the_pods_and_binds_the_request() -> None:
    state = scattered()
    plan = plan_defrag(scheduler(state), BIG).plan
    assert plan is not None
    apply_plan(state, plan)
    assert state.placements["big"] == plan.placement
    for move in plan.moves:
        assert state.placements[move.pod].node == move.to_node
        assert state.placements[move.pod].gpus == move.gpus
    assert (state.gpu_alloc <= 1000).all()


def test_a_plan_needing_more_moves_than_the_budget_is_refused() -> None:
    state = scattered()
    before = snapshot(state)
    result = plan_defrag(scheduler(state), BIG, max_moves=1)
    assert result.plan is None
    assert "budget too small" in result.reason and "2 > max_moves=1" in result.reason
    assert_unchanged(state, before)


def test_no_plan_when_the_cluster_lacks_free_gpu_in_total() -> None:
    state = cluster(node("n0", 2), node("n1", 2), node("n2", 2))
    for i in range(3):
        bind(state, whole(f"p{i}", 1), i, (0,))
    result = plan_defrag(scheduler(state), BIG)
    assert result.plan is None
    assert "not enough free GPU milli in total: 3000" in result.reason


def test_pods_that_may_not_move_stay_and_equal_plans_go_to_the_lowest_node() -> None:
    state = scattered()
    result = plan_defrag(scheduler(state), BIG, max_moves=3, movable=lambda p: p.request.name not in "de")
    assert result.plan is not None
    # n0 and n2 both need 3 moves of 3000 milli: the lower index wins
    assert result.plan.target_node == 0
    assert sorted(m.pod for m in result.plan.moves) == ["a", "b", "c"]


def test_below_priority_moves_only_pods_of_lower_priority() -> None:
    state = scattered(priority=5)
    urgent = whole("big", 4, priority=5)
    result = plan_defrag(scheduler(state), urgent, max_moves=3, movable=below_priority(5))
    assert result.plan is not None
    assert {m.pod for m in result.plan.moves}.isdisjoint({"d", "e"})
    assert below_priority(6)(state.placements["d"])


def test_no_plan_when_every_pod_in_the_way_is_pinned() -> None:
    result = plan_defrag(scheduler(scattered()), BIG, movable=lambda p: False)
    assert result.plan is None
    assert "may not move" in result.reason


def test_equal_move_counts_prefer_the_least_gpu_moved() -> None:
    state = cluster(node("n0", 4), node("n1", 4), node("n2", 2))
    bind(state, whole("w", 2), 0, (0, 1))  # n0: one move of 2000 milli
    bind(state, whole("s", 1), 1, (0,))  # n1: one move of 1000 milli
    result = plan_defrag(scheduler(state), BIG)
    assert result.plan is not None
    assert result.plan.target_node == 1
    assert [m.pod for m in result.plan.moves] == ["s"]


def test_evicted_pods_never_go_back_to_the_target_node() -> None:
    # A 600-milli share fits no GPU. Evicting p1 (300) from n0's GPU 0 makes room; best fit would then put
    # p1 right back on n0's GPU 1 (300 free, the tightest fit), which moves nothing off the node.
    state = cluster(node("n0", 2), node("n1", 1))
    bind(state, share("p1", 300), 0, (0,))
    bind(state, share("p2", 300), 0, (0,))
    bind(state, share("q", 700), 0, (1,))
    bind(state, share("r", 500), 1, (0,))
    req = share("want", 600)
    sched = scheduler(state)
    assert sched.decide(req).placement is None
    result = plan_defrag(sched, req)
    assert result.plan is not None
    assert result.plan.target_node == 0
    assert result.plan.placement.gpus == (0,)
    assert [(m.pod, m.from_node, m.to_node) for m in result.plan.moves] == [("p1", 0, 1)]


def test_a_tensor_parallel_request_gets_a_whole_nvlink_island_on_the_first_try() -> None:
    # n0 has 4 free GPUs, 2 in each island: the 4-GPU same-island request needs one island emptied.
    state = cluster(node("n0", 8, island_size=4), node("n1", 2))
    for name, gpu in (("a", 0), ("b", 1), ("c", 4), ("d", 5)):
        bind(state, whole(name, 1), 0, (gpu,))
    req = whole("tp", 4, same_island=True)
    sched = scheduler(state)
    assert sched.decide(req).placement is None
    result = plan_defrag(sched, req, max_attempts=1)
    assert result.plan is not None
    assert result.plan.placement.gpus == (0, 1, 2, 3)
    assert sorted(m.pod for m in result.plan.moves) == ["a", "b"]


@pytest.mark.parametrize("resource", ["cpu", "mem"])
def test_a_cpu_or_memory_shortfall_on_the_target_is_covered_by_moving_the_biggest_consumer(
    resource: str,
) -> None:
    state = cluster(node("n0", 4, cpu=8_000, mem=8_000), node("n1", 2))
    hog = Request("hog", cpu_milli=7_000) if resource == "cpu" else Request("hog", memory_mib=7_000)
    small = Request("small", cpu_milli=500, memory_mib=500)
    bind(state, hog, 0)
    bind(state, small, 0)
    req = whole("big", 4, cpu=4_000, mem=4_000)
    sched = scheduler(state)
    assert sched.decide(req).placement is None
    result = plan_defrag(sched, req)
    assert result.plan is not None
    assert [(m.pod, m.to_node) for m in result.plan.moves] == [("hog", 1)]


def test_when_evicted_pods_fit_nowhere_else_the_next_candidate_is_tried() -> None:
    # d and e may run only in n1's pool, so emptying n1 (2 moves) fails; emptying n0 (3 moves) works.
    state = cluster(node("n0", 4), node("n1", 4, pool="p1"), node("n2", 4), node("n3", 2))
    for name, at, gpu in (("a", 0, 0), ("b", 0, 1), ("c", 0, 2), ("f", 2, 0), ("g", 2, 1), ("h", 2, 2)):
        bind(state, whole(name, 1), at, (gpu,))
    for name, gpu in (("d", 0), ("e", 1)):
        bind(state, whole(name, 1, pools=frozenset({"p1"})), 1, (gpu,))
    sched = scheduler(state)
    one = plan_defrag(sched, BIG, max_moves=3, max_attempts=1)
    assert one.plan is None
    assert "fits nowhere else" in one.reason
    result = plan_defrag(sched, BIG, max_moves=3)
    assert result.plan is not None
    assert result.plan.target_node == 0


def test_the_target_must_pass_every_filter_of_the_policy_not_only_have_room() -> None:
    # Spread (max skew 1 per node) keeps a third "web" replica off n0 and n1 while they hold one. Moving
    # p or q would give n0 room (and sorts first), but only moving web-0 itself lets the replica in there.
    state = cluster(node("n0", 4), node("n1", 2), node("n2", 4), node("n3", 2))
    web = {"deployment": "web", "spread": Spread("node", 1)}
    bind(state, whole("web-0", 1, **web), 0, (0,))  # type: ignore[arg-type]
    bind(state, whole("web-1", 1, **web), 1, (0,))  # type: ignore[arg-type]
    for name, at, gpu in (("p", 0, 1), ("q", 0, 2), ("u", 1, 1), ("r", 2, 0), ("s", 2, 1), ("t", 2, 2)):
        bind(state, whole(name, 1), at, (gpu,))
    bind(state, whole("z", 1), 3, (0,))
    req = whole("web-2", 2, **web)  # type: ignore[arg-type]
    sched = scheduler(state)
    assert sched.decide(req).placement is None
    result = plan_defrag(sched, req)
    assert result.plan is not None
    assert (result.plan.target_node, [m.pod for m in result.plan.moves]) == (0, ["web-0"])
    # with the web replicas pinned, n0 is out: the plan goes to n2, the next node with one pod in the way
    pinned = plan_defrag(sched, req, movable=lambda p: p.request.deployment != "web")
    assert pinned.plan is not None
    assert (pinned.plan.target_node, [m.pod for m in pinned.plan.moves]) == (2, ["r"])


def test_a_request_that_fits_already_gets_a_plan_without_moves_and_the_rng_is_untouched() -> None:
    state = cluster(node("n0", 4), node("n1", 2), node("n2", 4))
    sched = scheduler(state, "random", seed=1)
    rng_before = sched.rng.bit_generator.state
    result = plan_defrag(sched, BIG)
    assert sched.rng.bit_generator.state == rng_before
    assert result.plan is not None
    assert result.plan.moves == ()
    assert result.plan.placement.node in (0, 2)
    assert "big" not in state.placements


def test_planning_for_a_bound_request_is_refused() -> None:
    state = cluster(node("n0", 4))
    bind(state, BIG, 0, (0, 1, 2, 3))
    with pytest.raises(ValueError, match="already bound"):
        plan_defrag(scheduler(state), BIG)


def test_a_stale_plan_is_refused_and_changes_nothing() -> None:
    state = scattered()
    sched: Scheduler = scheduler(state)
    plan = plan_defrag(sched, BIG).plan
    assert plan is not None
    moved = state.unbind(plan.moves[0].pod)
    bind(state, moved.request, 3, (0,))
    before = snapshot(state)
    with pytest.raises(StalePlanError, match=plan.moves[0].pod):
        apply_plan(state, plan)
    assert_unchanged(state, before)


def test_a_plan_whose_destination_filled_up_is_undone_whole() -> None:
    state = scattered()
    plan = plan_defrag(scheduler(state), BIG).plan
    assert plan is not None
    last = plan.moves[-1]
    for gpu in last.gpus:  # someone else takes the GPU the last move was heading for
        bind(state, whole(f"squatter-{gpu}", 1), last.to_node, (gpu,))
    before = snapshot(state)
    with pytest.raises(CapacityError):
        apply_plan(state, plan)
    assert_unchanged(state, before)
