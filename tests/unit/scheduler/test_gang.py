"""Gangs are placed whole or not at all, biggest member first, and a failure leaves no trace."""

from __future__ import annotations

import pytest

from computenet.scheduler.gang import GangResult, gang_order, place_gang
from computenet.scheduler.request import Placement
from computenet.scheduler.trial import Trial

from .placement_support import assert_unchanged, bind, cluster, node, scheduler, share, snapshot, whole


def test_a_gang_that_fits_is_placed_whole_and_reported_in_the_given_order() -> None:
    state = cluster(node("n0", 4), node("n1", 4))
    gang = [whole("prefill-0", 2), whole("prefill-1", 2), whole("decode-0", 4)]
    result = place_gang(scheduler(state), gang)
    assert result.placed
    assert result.placements is not None
    assert [p.request.name for p in result.placements] == ["prefill-0", "prefill-1", "decode-0"]
    for placement in result.placements:
        assert state.placements[placement.request.name] == placement
    assert state.gpu_free.sum() == 0


def test_when_one_member_fits_nowhere_no_member_is_placed_and_the_state_is_as_before() -> None:
    state = cluster(node("n0", 4), node("n1", 4))
    bind(state, whole("other", 2, deployment="chat"), 1, (0, 1))
    before = snapshot(state)
    gang = [whole("prefill-0", 2, deployment="pd"), whole("prefill-1", 2, deployment="pd")]
    gang.append(whole("decode", 4, deployment="pd"))
    result = place_gang(scheduler(state), gang)
    assert result == GangResult(None, result.reason)
    assert "prefill-1" in result.reason
    assert_unchanged(state, before)  # placements, arrays and no leftover "pd" replica counter
    assert "pd" not in state.replicas
    assert (state.version > before["version"]).any()  # scorers' caches see the nodes changed


def test_members_go_largest_gpu_demand_first_so_small_ones_do_not_starve_the_big_one() -> None:
    # least-allocated ("stability") puts a lone 1-GPU member on the 4-GPU node; in arrival order that
    # leaves the 4-GPU member nowhere to go.
    gang = [whole("small-0", 1), whole("small-1", 1), whole("big", 4)]
    naive_state = cluster(node("n0", 4), node("n1", 2))
    naive = scheduler(naive_state, "stability")
    assert [naive.place(r).placement is not None for r in gang] == [True, True, False]

    state = cluster(node("n0", 4), node("n1", 2))
    result = place_gang(scheduler(state, "stability"), gang)
    assert result.placed
    assert state.placements["big"].node == 0
    assert {state.placements["small-0"].node, state.placements["small-1"].node} == {1}


def test_gang_order_sorts_by_gpu_demand_and_keeps_equal_members_in_order() -> None:
    members = [share("s", 500), whole("w1-a", 1), whole("w4", 4), whole("w1-b", 1), whole("w2", 2, cpu=1)]
    assert [r.name for r in gang_order(members)] == ["w4", "w2", "w1-a", "w1-b", "s"]
    by_cpu = [whole("low", 1, cpu=1), whole("high", 1, cpu=2)]
    assert [r.name for r in gang_order(by_cpu)] == ["high", "low"]


def test_a_failed_gang_leaves_the_rng_as_it_was() -> None:
    state = cluster(*(node(f"n{i}", 2) for i in range(4)))
    sched = scheduler(state, "random", seed=7)
    rng_before = sched.rng.bit_generator.state
    # 9 GPUs asked of 8: the 2-GPU members and two 1-GPU members are placed (random ties draw from the
    # RNG) before the last one fails
    gang = [whole(f"pair{i}", 2) for i in range(3)] + [whole(f"single{i}", 1) for i in range(3)]
    result = place_gang(sched, gang)
    assert not result.placed and "single2" in result.reason
    assert sched.rng.bit_generator.state == rng_before
    # later decisions are those of a scheduler that never saw the gang
    fresh = scheduler(cluster(*(node(f"n{i}", 2) for i in range(4))), "random", seed=7)
    for i in range(6):
        assert sched.place(share(f"s{i}", 300)).placement == fresh.place(share(f"s{i}", 300)).placement


@pytest.mark.parametrize("already_bound", [False, True])
def test_a_malformed_gang_is_refused_before_anything_is_bound(already_bound: bool) -> None:
    state = cluster(node("n0", 4))
    if already_bound:
        bind(state, whole("a", 1), 0, (0,))
        gang = [whole("b", 1), whole("a", 1)]
    else:
        gang = [whole("a", 1), whole("b", 1), whole("a", 1)]
    before = snapshot(state)
    with pytest.raises(ValueError, match="a"):
        place_gang(scheduler(state), gang)
    assert_unchanged(state, before)


def test_an_empty_gang_is_placed_trivially() -> None:
    state = cluster(node("n0", 1))
    assert place_gang(scheduler(state), []) == GangResult((), "empty gang: nothing to place")


def test_trial_undo_restores_the_order_of_placements_after_unbind_and_rebind() -> None:
    state = cluster(node("n0", 2), node("n1", 2))
    for name, gpu in (("a", 0), ("b", 1)):
        bind(state, whole(name, 1), 0, (gpu,))
    bind(state, whole("c", 1), 1, (0,))
    before = snapshot(state)
    trial = Trial(state)
    moved = trial.unbind("a")
    trial.bind(Placement(moved.request, 1, (1,)))
    assert list(state.placements) == ["b", "c", "a"]
    trial.undo()
    assert list(state.placements) == ["a", "b", "c"]
    assert_unchanged(state, before)


def test_trial_refuses_a_scheduler_of_another_state() -> None:
    trial = Trial(cluster(node("n0", 1)))
    with pytest.raises(ValueError, match="another cluster state"):
        trial.place(scheduler(cluster(node("n0", 1))), whole("a", 1))
