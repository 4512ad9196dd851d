"""ClusterState's bind/unbind, the scheduler's decisions and their reasons, inventory and request checks."""

from __future__ import annotations

import pytest

from computenet.scheduler.inventory import Gpu, Inventory, InventoryError, Node, PoolInventory
from computenet.scheduler.request import Placement, Request, RequestError, Spread
from computenet.scheduler.scorers import BinpackScorer
from computenet.scheduler.state import CapacityError, ClusterState

from .builders import bind, cluster, cpu_pod, node, scheduler, share, whole

ARRAYS = ("cpu_free", "mem_free", "gpu_alloc", "gpu_mem_alloc", "gpu_free", "gpu_mem_free", "affinity")


def snapshot(state: ClusterState) -> dict[str, object]:
    """Everything bind and unbind change (but versions), as plain comparable values."""
    out: dict[str, object] = {name: getattr(state, name).tolist() for name in ARRAYS}
    out["replicas"] = {k: v.tolist() for k, v in state.replicas.items() if v.any()}
    out["placements"] = dict(state.placements)
    out["node_pods"] = [set(p) for p in state.node_pods]
    return out


def _state() -> ClusterState:
    return cluster(node("a", 4, cpu=16_000, mem=64_000, gpu_mem=40_000), node("b", 2, cpu=8000, mem=32_000))


def test_bind_takes_what_the_request_asks_for() -> None:
    state = _state()
    bind(state, share("s", 300, cpu=1000, mem=2000, gpu_mem=10_000), "a", [2])
    bind(state, whole("w", 2, cpu=2000, mem=4000), "a", [0, 1])
    assert state.cpu_free.tolist() == [13_000, 8000] and state.mem_free.tolist() == [58_000, 32_000]
    assert state.gpu_free[0].tolist() == [0, 0, 700, 1000]
    assert state.gpu_mem_free[0].tolist() == [0, 0, 30_000, 40_000]  # a whole GPU holds all its memory
    assert state.affinity[0].tolist() == [1, 0, 1, 0, 0, 0, 0, 0, 0]  # one share, one 2-GPU pod
    assert state.gpu_allocated_milli == 2300 and state.gpu_capacity_milli == 6000
    assert state.idle_milli().tolist() == [1700, 2000]
    assert state.node_pods[0] == {"s", "w"}


def test_bind_then_unbind_restores_every_array_exactly() -> None:
    state = _state()
    before = snapshot(state)
    version = state.version.copy()
    reqs = [
        (share("s1", 250, cpu=500, mem=100, gpu_mem=5000), "a", [0]),
        (share("s2", 750, gpu_mem=35_000), "a", [0]),
        (whole("w1", 2, cpu=3000, deployment="web"), "a", [1, 3]),
        (whole("w2", 1, mem=30_000, deployment="web"), "b", [1]),
        (cpu_pod("c1", 8000), "b", []),
    ]
    for req, name, gpus in reqs:
        bind(state, req, name, gpus)
    middle = snapshot(state)
    state.unbind("s2")
    state.unbind("w1")
    bind(state, share("s2", 750, gpu_mem=35_000), "a", [0])
    bind(state, whole("w1", 2, cpu=3000, deployment="web"), "a", [1, 3])
    assert snapshot(state) == middle
    for name in ("c1", "s1", "w2", "w1", "s2"):
        assert state.unbind(name).request.name == name
    assert snapshot(state) == before
    assert (state.version > version).all()


@pytest.mark.parametrize(
    ("req", "where", "gpus"),
    [
        (cpu_pod("cpu", 16_001), "a", []),
        (cpu_pod("mem", 0, mem=64_001), "a", []),
        (share("milli", 800), "a", [0]),  # GPU 0 has 500 left
        (share("gpu-mem", 100, gpu_mem=20_001), "a", [0]),  # GPU 0 has 20000 MiB left
        (whole("partly-used", 1), "a", [0]),
        (whole("taken", 1), "a", [1]),
        (whole("count", 2), "a", [2]),
        (share("count", 100), "a", [2, 3]),
        (whole("same-gpu-twice", 2), "a", [2, 2]),
        (whole("no-such-gpu", 1), "b", [3]),
        (whole("negative-index", 1), "a", [-1]),
        (whole("past-the-last-gpu", 1), "a", [4]),
        (share("cpu-only-node", 100), "c", [0]),
    ],
    ids=lambda v: v.name if isinstance(v, Request) else None,
)
def test_bind_that_overdraws_raises_and_changes_nothing(req: Request, where: str, gpus: list[int]) -> None:
    state = cluster(node("a", 4, cpu=16_000, mem=64_000, gpu_mem=40_000), node("b", 2), node("c", 0))
    bind(state, share("half", 500, gpu_mem=20_000), "a", [0])
    bind(state, whole("one", 1), "a", [1])
    before = snapshot(state)
    with pytest.raises(CapacityError):
        bind(state, req, where, gpus)
    assert snapshot(state) == before


def test_bind_refuses_a_name_already_bound() -> None:
    state = _state()
    bind(state, share("s", 100), "a", [0])
    with pytest.raises(CapacityError, match="already bound to a"):
        bind(state, share("s", 100), "b", [0])


def test_bind_refuses_a_node_outside_the_cluster() -> None:
    state = _state()
    for index in (2, -1):
        with pytest.raises(CapacityError, match="no node"):
            state.bind(Placement(cpu_pod("c"), index))
    assert not state.placements and state.cpu_free.tolist() == [16_000, 8000]


def test_bind_refuses_an_unhealthy_gpu() -> None:
    state = _state()
    state.set_gpu_health(0, 3, False)
    with pytest.raises(CapacityError):
        bind(state, share("s", 1), "a", [3])
    assert state.version[0] == 1  # the health change counts as a change of the node


def test_decide_does_not_bind_and_place_does() -> None:
    state = _state()
    sched = scheduler(state, BinpackScorer())
    decision = sched.decide(whole("w", 1))
    assert decision.placement is not None and decision.reason() == "placed" and decision.feasible_nodes == 2
    assert state.gpu_allocated_milli == 0 and not state.placements
    assert sched.place(whole("w", 1)).placement == decision.placement
    assert state.placements["w"] == decision.placement


def test_decision_reason_names_the_filters_that_rejected_nodes() -> None:
    state = cluster(
        node("t4", 1, gpu_type="T4"),
        node("busy", 1, gpu_type="A100", cpu=1000),
        node("down", 1, gpu_type="A100", healthy=False),
        node("a100", 1, gpu_type="A100"),
    )
    sched = scheduler(state)
    decision = sched.decide(whole("big", 1, cpu=2000, types={"A100"}))
    assert decision.placement is not None and state.names[decision.placement.node] == "a100"
    state.set_node_health(3, False)
    decision = sched.decide(whole("big", 1, cpu=2000, types={"A100"}))
    assert decision.placement is None and decision.feasible_nodes == 0
    assert decision.rejected_by == {
        "health": 2,
        "pool": 0,
        "taints": 0,
        "gpu-type": 1,
        "fit": 1,
        "topology": 0,
        "spread": 0,
    }
    assert decision.reason() == "no node fits: nodes rejected 2 by health, 1 by gpu-type, 1 by fit"


def test_decision_on_an_empty_cluster() -> None:
    decision = scheduler(ClusterState(Inventory(()))).decide(cpu_pod("c"))
    assert (
        decision.placement is None
        and decision.reason() == "no node fits: nodes rejected none (empty cluster)"
    )


def test_type_mask_and_pool_labels() -> None:
    inventory = Inventory.from_pools(
        [
            PoolInventory(
                "p1", (node("a", 1, gpu_type="A100"), node("t", 1, gpu_type="T4")), region="eu", zone="z1"
            ),
            PoolInventory("p2", (node("c", 0, zone="own"),), region="us", zone="z2"),
        ]
    )
    state = ClusterState(inventory)
    assert state.type_mask(frozenset({"T4"})).tolist() == [False, True, False]
    assert state.type_mask(frozenset()).tolist() == [True, True, True]
    assert [n.pool for n in inventory.nodes] == ["p1", "p1", "p2"]
    assert inventory.nodes[2].zone == "own" and inventory.nodes[2].region == "us"  # a node's own label wins
    assert inventory.gpu_count == 2


def test_inventory_rejects_what_cannot_be_scheduled_onto() -> None:
    with pytest.raises(InventoryError, match="'a' appears twice"):
        Inventory((node("a"), node("a")))
    with pytest.raises(InventoryError, match="mixes GPU models"):
        Inventory((Node("m", 1, 1, (Gpu(0, "A100"), Gpu(1, "T4"))),))
    with pytest.raises(InventoryError, match=r"GPU indices must be 0\.\.1"):
        Inventory((Node("i", 1, 1, (Gpu(0, "A100"), Gpu(2, "A100"))),))
    with pytest.raises(InventoryError, match="must be >= 0"):
        Inventory((Node("n", -1, 1),))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_gpu": -1}, "num_gpu must be >= 0"),
        ({"gpu_milli": 500}, "needs num_gpu >= 1"),
        ({"num_gpu": 1, "gpu_milli": 0}, "gpu_milli must be in 1..1000"),
        ({"num_gpu": 1, "gpu_milli": 1001}, "gpu_milli must be in 1..1000"),
        ({"num_gpu": 2, "gpu_milli": 500}, "takes them whole"),
        ({"cpu_milli": -1}, "must be >= 0"),
        ({"spread": Spread("node", 0)}, "max_skew must be >= 1"),
    ],
)
def test_request_rejects_what_no_node_could_satisfy(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        Request(name="r", **kwargs)  # type: ignore[arg-type]


def test_placement_records_the_request() -> None:
    state = _state()
    placement = bind(state, share("s", 100), "b", [1])
    assert placement == Placement(share("s", 100), 1, (1,))
    assert state.unbind("s") == placement and not state.node_pods[1]
