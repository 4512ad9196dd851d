"""The two costs the `utilization` preset adds to FGD: CPU stranding and model pressure."""

from __future__ import annotations

import numpy as np
import pytest

from computenet.scheduler.fgd import FgdScorer
from computenet.scheduler.frag import TargetWorkload, TaskClass
from computenet.scheduler.framework import Policy, Scheduler
from computenet.scheduler.policies import default_filters, make_policy
from computenet.scheduler.state import ClusterState
from computenet.scheduler.stranding import (
    CpuStranding,
    ModelPressure,
    cpu_per_gpu_milli,
    pinned_density,
    stranded_milli,
)

from .builders import bind, cluster, cpu_pod, node, placed_on, share, whole

# 1-GPU tasks asking 12 cores each: 12 CPU milli per milli-GPU
TWELVE_CORES_PER_GPU = TargetWorkload([TaskClass(12_000, 1000, 1, frozenset(), 1.0)])


def test_cpu_per_gpu_weighs_classes_by_popularity_and_ignores_cpu_only_ones() -> None:
    workload = TargetWorkload(
        [
            TaskClass(8_000, 1000, 1, frozenset(), 0.5),  # 8 cores per GPU
            TaskClass(8_000, 500, 1, frozenset(), 0.25),  # 16 cores per GPU
            TaskClass(32_000, 0, 0, frozenset(), 0.25),  # CPU only: no GPU to feed
        ]
    )
    # (0.5 * 8000 + 0.25 * 8000) / (0.5 * 1000 + 0.25 * 500)
    assert cpu_per_gpu_milli(workload) == pytest.approx(6000 / 625)
    assert cpu_per_gpu_milli(TargetWorkload([TaskClass(4000, 0, 0, frozenset(), 1.0)])) == 0.0


def test_idle_gpus_beyond_what_the_free_cpu_can_feed_are_stranded() -> None:
    stranded = stranded_milli(np.array([96_000, 20_000, 0, -5]), np.array([8000, 8000, 500, 0]), 12.0)
    # 96 cores feed all 8 GPUs; 20 cores feed 1667 milli of 8000; no CPU feeds nothing
    assert stranded.tolist() == pytest.approx([0.0, 8000 - 20_000 / 12, 500.0, 0.0])


def test_a_cpu_only_pod_is_charged_for_the_gpus_its_cpu_strands() -> None:
    state = cluster(node("gpu-dense", 8, cpu=96_000), node("cpu-rich", 2, cpu=104_000), node("full", 1))
    bind(state, whole("w", 1), "full", [0])
    term = CpuStranding(TWELVE_CORES_PER_GPU)
    delta = term.delta(state, cpu_pod("batch", 32_000), np.arange(3))
    # gpu-dense keeps 64 cores for 8 GPUs: 64000 / 12 milli fed, the rest stranded
    assert delta.tolist() == pytest.approx([8000 - 64_000 / 12, 0.0, 0.0])


def test_a_gpu_pod_that_brings_its_share_of_cpu_strands_nothing() -> None:
    state = cluster(node("n", 8, cpu=96_000))
    term = CpuStranding(TWELVE_CORES_PER_GPU)
    assert term.delta(state, whole("w", 2, cpu=24_000), np.arange(1)).tolist() == [0.0]
    # a CPU-hungry share takes more than its GPU's part of the CPU: the rest of the node pays
    hungry = term.delta(state, share("s", 500, cpu=30_000), np.arange(1))
    assert hungry[0] == pytest.approx(7500 - 66_000 / 12)


def fgd_policy(workload: TargetWorkload, *terms: CpuStranding | ModelPressure) -> Policy:
    fgd = FgdScorer(workload, quantized=True, terms=terms)
    return Policy("fgd", default_filters(), ((fgd, 1.0),), fgd, "first")


def test_cpu_heavy_pods_go_where_cpu_is_spare_instead_of_stranding_gpus() -> None:
    """Plain FGD sees no fragmentation either way (one 12-core task still fits on both) and takes the
    first node; with the stranding term the batch job leaves the GPU-dense node's CPU to its GPUs."""

    def place(*terms: CpuStranding) -> str:
        state = cluster(node("gpu-dense", 8, cpu=96_000), node("cpu-rich", 2, cpu=104_000))
        decision = Scheduler(state, fgd_policy(TWELVE_CORES_PER_GPU, *terms)).place(cpu_pod("batch", 32_000))
        return placed_on(state, decision)

    assert place() == "gpu-dense"
    assert place(CpuStranding(TWELVE_CORES_PER_GPU)) == "cpu-rich"


PINNED_HALF = TargetWorkload(
    [
        TaskClass(0, 1000, 1, frozenset(), 0.5),
        TaskClass(0, 1000, 1, frozenset({"P100"}), 0.5),
    ]
)


def two_models() -> ClusterState:
    return cluster(node("g2", 4, gpu_type="G2"), node("p100", 4, gpu_type="P100"))


def test_pinned_density_is_the_share_of_a_models_capacity_pinned_requests_will_claim() -> None:
    density = pinned_density(PINNED_HALF, ["G2", "P100"], np.array([4000.0, 4000.0]))
    # half the demand, all of it pinned to P100, over half the cluster: P100 is fully claimed
    assert density.tolist() == pytest.approx([0.0, 1.0])
    # a class allowed on every model is not pinned
    anywhere = TargetWorkload([TaskClass(0, 1000, 1, frozenset({"G2", "P100"}), 1.0)])
    assert pinned_density(anywhere, ["G2", "P100"], np.array([1.0, 1.0])).tolist() == [0.0, 0.0]


# a quarter of the demand pinned to each model: FGD sees the two models alike
PINNED_QUARTERS = TargetWorkload(
    [
        TaskClass(0, 1000, 1, frozenset(), 0.5),
        TaskClass(0, 1000, 1, frozenset({"P100"}), 0.25),
        TaskClass(0, 1000, 1, frozenset({"G2"}), 0.25),
    ]
)


def test_requests_for_any_model_leave_scarce_pinned_models_to_the_pods_pinned_to_them() -> None:
    """The same pinned demand meets 2 P100s and 8 G2s. FGD's Delta is the same on both (-250: a GPU
    that a quarter of the workload cannot use is taken) and the first node, the P100, wins; with model
    pressure the unpinned pod takes a G2, and a pod pinned to P100 still gets its P100."""

    def place(req_types: tuple[str, ...], *terms: ModelPressure) -> str:
        state = cluster(node("p100", 2, gpu_type="P100"), node("g2", 8, gpu_type="G2"))
        policy = fgd_policy(PINNED_QUARTERS, *terms)
        return placed_on(state, Scheduler(state, policy).place(whole("r", 1, types=req_types)))

    assert place(()) == "p100"
    assert place((), ModelPressure(PINNED_QUARTERS)) == "g2"
    assert place(("P100",), ModelPressure(PINNED_QUARTERS)) == "p100"


def test_model_pressure_spares_cpu_only_pods_and_pinned_requests() -> None:
    state = two_models()
    term = ModelPressure(PINNED_HALF)
    nodes = np.arange(2)
    assert term.delta(state, cpu_pod("c", 1000), nodes).tolist() == [0.0, 0.0]
    assert term.delta(state, whole("p", 1, types=("P100",)), nodes).tolist() == [0.0, 0.0]
    assert term.delta(state, whole("any", 2), nodes).tolist() == pytest.approx([0.0, 2000.0])


def test_the_utilization_preset_uses_both_terms() -> None:
    state = cluster(node("gpu-dense", 8, cpu=96_000), node("cpu-rich", 2, cpu=104_000))
    workload = TargetWorkload(
        [TaskClass(12_000, 1000, 1, frozenset(), 0.9), TaskClass(32_000, 0, 0, frozenset(), 0.1)]
    )
    decision = Scheduler(state, make_policy("utilization", workload)).place(cpu_pod("batch", 32_000))
    assert placed_on(state, decision) == "cpu-rich"


def test_one_model_pressure_term_serves_clusters_of_different_sizes() -> None:
    """The density depends on each model's capacity, so a term reused on another cluster recomputes it."""
    term = ModelPressure(PINNED_QUARTERS)
    small = cluster(node("p100", 2, gpu_type="P100"), node("g2", 8, gpu_type="G2"))
    large = cluster(node("p100", 8, gpu_type="P100"), node("g2", 8, gpu_type="G2"))
    # a quarter of the demand pinned to P100: on 2 of 10 GPUs 1.25 of its capacity, on 8 of 16 0.5
    assert term.density(small).tolist() == pytest.approx([0.3125, 1.25])
    assert term.density(large).tolist() == pytest.approx([0.5, 0.5])
