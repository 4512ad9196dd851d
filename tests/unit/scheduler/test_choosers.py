"""GPU choosers: which devices a request gets on its node."""

from __future__ import annotations

import numpy as np

from computenet.scheduler.choosers import BestFitChooser, RandomChooser, whole_gpus
from computenet.scheduler.framework import GpuChooser
from computenet.scheduler.request import Request
from computenet.scheduler.state import ClusterState

from .builders import bind, cluster, node, scheduler, share, whole

RNG = np.random.default_rng(0)


def _choose(chooser: GpuChooser, state: ClusterState, req: Request) -> tuple[int, ...]:
    return chooser.choose(state, req, 0, RNG)


def _used(*taken: int, gpus: int = 4) -> ClusterState:
    """One node whose GPU i has `taken[i]` milli taken by shares."""
    state = cluster(node("n", gpus))
    for i, milli in enumerate(taken):
        if milli:
            bind(state, share(f"s{i}", milli), "n", [i])
    return state


def test_best_fit_puts_a_share_on_the_fullest_gpu_that_holds_it() -> None:
    state = _used(0, 700, 400, 900)  # free 1000, 300, 600, 100
    assert _choose(BestFitChooser(), state, share("r", 200)) == (1,)
    assert _choose(BestFitChooser(), state, share("r", 100)) == (3,)
    assert _choose(BestFitChooser(), state, share("r", 400)) == (2,)
    assert _choose(BestFitChooser(), state, share("r", 700)) == (0,)


def test_best_fit_breaks_ties_by_lowest_index() -> None:
    assert _choose(BestFitChooser(), _used(0, 500, 0, 500), share("r", 500)) == (1,)
    assert _choose(BestFitChooser(), _used(0, 0, 0, 0), share("r", 500)) == (0,)


def test_best_fit_skips_a_gpu_without_the_gpu_memory() -> None:
    state = cluster(node("n", 2, gpu_mem=16_000))
    bind(state, share("a", 500, gpu_mem=14_000), "n", [0])  # tightest milli, but 2000 MiB left
    assert _choose(BestFitChooser(), state, share("r", 100, gpu_mem=4000)) == (1,)
    assert _choose(BestFitChooser(), state, share("r", 100, gpu_mem=2000)) == (0,)


def test_whole_gpus_are_the_first_fully_free_ones() -> None:
    state = _used(300, 0, 0, 0)
    bind(state, whole("w", 1), "n", [2])
    assert _choose(BestFitChooser(), state, whole("r", 1)) == (1,)
    assert _choose(BestFitChooser(), state, whole("r", 2)) == (1, 3)
    assert _choose(RandomChooser(), state, whole("r", 2)) == (1, 3)


def test_tensor_parallel_stays_in_one_island() -> None:
    state = cluster(node("n", 4, islands=[0, 1, 0, 1]))
    bind(state, whole("w", 1), "n", [0])
    # first free would be (1, 2), which spans two islands
    assert whole_gpus(state, whole("tp", 2, same_island=True), 0) == (1, 3)
    assert whole_gpus(state, whole("dp", 2), 0) == (1, 2)


def test_tensor_parallel_takes_the_smallest_island_that_fits() -> None:
    state = cluster(node("n", 8, islands=[0, 0, 0, 0, 1, 1, 2, 2]))
    bind(state, whole("w", 1), "n", [6])
    # islands with free GPUs: 0 has 4, 1 has 2, 2 has 1
    assert whole_gpus(state, whole("tp2", 2, same_island=True), 0) == (4, 5)
    assert whole_gpus(state, whole("tp3", 3, same_island=True), 0) == (0, 1, 2)
    assert whole_gpus(state, whole("tp4", 4, same_island=True), 0) == (0, 1, 2, 3)


def test_tensor_parallel_placement_end_to_end() -> None:
    state = cluster(node("n", 6, islands=[0, 0, 0, 0, 1, 1]))
    sched = scheduler(state)
    first = sched.place(whole("tp2", 2, same_island=True)).placement
    second = sched.place(whole("tp4", 4, same_island=True)).placement
    assert first is not None and first.gpus == (4, 5)  # keeps the 4-GPU island whole
    assert second is not None and second.gpus == (0, 1, 2, 3)


def test_random_chooser_puts_a_share_on_any_gpu_that_holds_it() -> None:
    state = _used(0, 900, 0, 400)  # GPU 1 has only 100 free
    rng = np.random.default_rng(1)
    picks = {RandomChooser().choose(state, share("r", 500), 0, rng) for _ in range(60)}
    assert picks == {(0,), (2,), (3,)}
