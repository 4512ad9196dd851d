"""The fragmentation measure F_n(M) and the typical pods M (FGD-PROTOCOL.md section 4)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from computenet.scheduler.frag import NodeFrag, TargetWorkload, TaskClass, frag
from computenet.scheduler.request import Request

from .builders import bind, cluster, cpu_pod, node, share, whole

TYPES = ["A", "B"]
LEFT = [1000, 600, 300, 0]
"""The node of these cases: GPU free milli 1000, 600, 300, 0 (idle 1900) and 8 vCPU free, model A."""


def klass(cpu: int, milli: int, count: int, types: Sequence[str] = (), weight: float = 1.0) -> TaskClass:
    return TaskClass(cpu, milli, count, frozenset(types), weight)


def f_n(
    classes: Sequence[TaskClass], gpu_free: Sequence[int] = LEFT, cpu: int = 8000, model: str = "A"
) -> float:
    """F_n(M) of one node."""
    value = frag(
        TargetWorkload(classes),
        TYPES,
        np.array([cpu], dtype=np.int64),
        np.array([gpu_free], dtype=np.int64),
        np.array([TYPES.index(model)], dtype=np.int64),
    )
    return float(value[0])


def test_a_cpu_only_class_counts_all_idle_gpu_as_fragmented() -> None:
    assert f_n([klass(1000, 0, 0)]) == 1900  # the CPU fits, but the class uses no GPU
    assert f_n([klass(100_000, 0, 0)]) == 1900


def test_a_class_not_allowed_on_the_model_counts_all_idle_gpu() -> None:
    assert f_n([klass(0, 500, 1, ["B"])]) == 1900
    assert f_n([klass(0, 500, 1, ["A"])]) == 300  # allowed: only the leftovers below 500 (300 and 0)
    assert f_n([klass(0, 500, 1, ["A", "B"])]) == 300
    assert f_n([klass(0, 500, 1, ["A"])], model="B") == 1900


def test_too_few_gpus_with_room_count_all_idle_gpu() -> None:
    assert f_n([klass(0, 700, 2)]) == 1900  # only the free GPU holds 700
    assert f_n([klass(100_000, 700, 2)]) == 1900  # lacks GPU and CPU
    assert f_n([klass(0, 500, 2)]) == 300  # 1000 and 600 hold 500 each: satisfied
    assert f_n([klass(0, 1000, 2)]) == 1900


def test_a_class_whose_gpus_fit_but_cpu_does_not_counts_all_idle_gpu() -> None:
    assert f_n([klass(8001, 100, 1)]) == 1900
    assert f_n([klass(8000, 100, 1)]) == 0  # satisfied, and every leftover (but the empty GPU) holds 100


def test_a_satisfied_class_counts_only_leftovers_too_small_for_it() -> None:
    assert f_n([klass(0, 1000, 1)]) == 600 + 300  # a whole-GPU class: every partly used GPU's leftover
    assert f_n([klass(0, 400, 1)]) == 300
    assert f_n([klass(0, 300, 1)]) == 0
    assert f_n([klass(0, 1000, 1)], gpu_free=[1000, 1000]) == 0  # an idle node wastes nothing
    assert f_n([klass(0, 1000, 1)], gpu_free=[0, 0]) == 0  # nor does a full one


def test_node_fragmentation_is_the_popularity_weighted_sum() -> None:
    classes = [klass(0, 0, 0, weight=0.25), klass(0, 1000, 1, weight=0.75)]
    assert f_n(classes) == pytest.approx(0.25 * 1900 + 0.75 * 900)
    # two classes with one per-GPU share but different counts: one satisfied, one not
    classes = [klass(0, 500, 1, weight=0.5), klass(0, 500, 4, weight=0.5)]
    assert f_n(classes) == pytest.approx(0.5 * 300 + 0.5 * 1900)


def test_frag_evaluates_many_node_states_at_once() -> None:
    classes = [klass(2000, 500, 1, ["A"], 0.4), klass(0, 1000, 2, weight=0.3), klass(1000, 0, 0, weight=0.3)]
    states = [
        ([1000, 1000, 1000, 1000], 8000, "A"),
        (LEFT, 1000, "A"),
        ([200, 700, 0, 0], 8000, "B"),
        (LEFT, 8000, "A"),
    ]
    together = frag(
        TargetWorkload(classes),
        TYPES,
        np.array([cpu for _, cpu, _ in states], dtype=np.int64),
        np.array([gpus for gpus, _, _ in states], dtype=np.int64),
        np.array([TYPES.index(model) for _, _, model in states], dtype=np.int64),
    )
    one_by_one = [f_n(classes, gpus, cpu, model) for gpus, cpu, model in states]
    assert together.tolist() == pytest.approx(one_by_one)
    # one free GPU: the 2-GPU class fails there
    assert one_by_one[3] == pytest.approx(0.4 * 300 + 0.3 * 1900 + 0.3 * 1900)


# ---- typical pods (section 4.1) ------------------------------------------------------------------------


def _trace() -> list[Request]:
    """20 pods of 4 classes: 10, 6, 3 and 1 of them."""
    pods = [share(f"s{i}", 500, cpu=1000, mem=1000 * i) for i in range(10)]  # memory varies: one class
    pods += [whole(f"w{i}", 1, cpu=2000) for i in range(6)]
    pods += [cpu_pod(f"c{i}", 4000) for i in range(3)]
    pods += [whole("t4", 2, types={"T4"})]
    return pods


def _classes(workload: TargetWorkload) -> dict[tuple[int, int, int, frozenset[str]], float]:
    return {(c.cpu_milli, c.gpu_milli, c.num_gpu, c.gpu_types): c.weight for c in workload.classes}


def test_typical_pods_are_the_most_frequent_classes_covering_95_percent() -> None:
    workload = TargetWorkload.typical(_trace())
    # 10 + 6 = 16 < 19 (95 % of 20); with the CPU-only class 19: the 1-pod class is left out
    assert _classes(workload) == pytest.approx(
        {
            (1000, 500, 1, frozenset()): 10 / 19,
            (2000, 1000, 1, frozenset()): 6 / 19,
            (4000, 0, 0, frozenset()): 3 / 19,
        }
    )
    assert sum(c.weight for c in workload.classes) == pytest.approx(1.0)


def test_typical_pods_stop_as_soon_as_coverage_is_reached() -> None:
    assert _classes(TargetWorkload.typical(_trace(), coverage=0.5)) == {(1000, 500, 1, frozenset()): 1.0}
    assert len(TargetWorkload.typical(_trace(), coverage=1.0).classes) == 4


def test_typical_pods_ignore_memory_but_keep_the_gpu_models() -> None:
    pods = [share("a", 500, mem=1), share("b", 500, mem=99_999), share("c", 500, types={"T4"})]
    classes = _classes(TargetWorkload.typical(pods, coverage=1.0))
    assert classes == pytest.approx({(0, 500, 1, frozenset()): 2 / 3, (0, 500, 1, frozenset({"T4"})): 1 / 3})


def test_typical_pods_do_not_depend_on_input_order() -> None:
    pods = _trace()
    shuffled = [pods[i] for i in np.random.default_rng(7).permutation(len(pods))]
    assert TargetWorkload.typical(shuffled).classes == TargetWorkload.typical(pods).classes
    # equally frequent classes: which one the cut keeps is fixed by the class itself
    tied = [share("a", 100), share("b", 200), share("c", 300)]
    assert (
        TargetWorkload.typical(tied, coverage=0.3).classes
        == TargetWorkload.typical(tied[::-1], coverage=0.3).classes
    )


# ---- per node, cached -----------------------------------------------------------------------------------


def test_node_frag_recomputes_the_nodes_that_changed() -> None:
    workload = TargetWorkload([klass(0, 1000, 1, weight=0.5), klass(0, 500, 1, weight=0.5)])
    state = cluster(node("a", 2), node("b", 1), node("c", 0))
    cached = NodeFrag(workload)
    assert cached(state).tolist() == [0, 0, 0]
    bind(state, share("s", 700), "a", [0])
    assert cached(state).tolist() == [0.5 * 300 + 0.5 * 300, 0, 0]
    bind(state, share("t", 200), "b", [0])
    state.set_gpu_health(0, 1, False)  # node a keeps only GPU 0's 300: nothing fits there
    assert cached(state).tolist() == pytest.approx([300, 0.5 * 800, 0])
    state.unbind("s")
    assert cached(state).tolist() == pytest.approx([0, 0.5 * 800, 0])  # a's one healthy GPU is free again
    assert cached(state).tolist() == NodeFrag(workload)(state).tolist()
