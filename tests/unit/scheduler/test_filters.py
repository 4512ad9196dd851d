"""Every filter: which nodes a request may go to at all."""

from __future__ import annotations

from computenet.scheduler.filters import (
    FitFilter,
    GpuTypeFilter,
    HealthFilter,
    PoolFilter,
    TaintFilter,
    TopologyFilter,
)
from computenet.scheduler.inventory import Inventory, PoolInventory, Taint
from computenet.scheduler.request import Request, Toleration
from computenet.scheduler.state import ClusterState

from .builders import bind, cluster, cpu_pod, node, passing, scheduler, share, whole

# ---- fit ------------------------------------------------------------------------------------------------


def test_fit_needs_the_cpu_left_on_the_node() -> None:
    state = cluster(node("small", cpu=4000), node("big", cpu=16_000))
    assert passing(state, FitFilter(), cpu_pod("p", 4000)) == {"small", "big"}
    assert passing(state, FitFilter(), cpu_pod("p", 4001)) == {"big"}
    bind(state, cpu_pod("taken", 13_000), "big")
    assert passing(state, FitFilter(), cpu_pod("p", 4000)) == {"small"}


def test_fit_needs_the_memory_left_on_the_node() -> None:
    state = cluster(node("small", mem=8000), node("big", mem=64_000))
    assert passing(state, FitFilter(), cpu_pod("p", 0, mem=8001)) == {"big"}
    bind(state, cpu_pod("taken", 0, mem=60_000), "big")
    assert passing(state, FitFilter(), cpu_pod("p", 0, mem=5000)) == {"small"}


def test_whole_gpus_need_fully_free_gpus() -> None:
    state = cluster(node("n", 2))
    bind(state, share("s", 100), "n", [0])
    # 1900 milli are free, but only one GPU is free as a whole
    assert passing(state, FitFilter(), whole("one", 1)) == {"n"}
    assert passing(state, FitFilter(), whole("two", 2)) == set()


def test_a_share_needs_one_gpu_with_room_not_the_sum_of_leftovers() -> None:
    state = cluster(node("n", 2))
    bind(state, share("a", 600), "n", [0])
    bind(state, share("b", 600), "n", [1])
    assert passing(state, FitFilter(), share("fits", 400)) == {"n"}
    assert passing(state, FitFilter(), share("too-big", 500)) == set()  # 800 free in all, 400 per GPU


def test_a_share_needs_gpu_memory_left_on_that_gpu() -> None:
    state = cluster(node("n", 1, gpu_mem=16_000))
    bind(state, share("a", 100, gpu_mem=12_000), "n", [0])
    assert passing(state, FitFilter(), share("fits", 100, gpu_mem=4000)) == {"n"}
    assert passing(state, FitFilter(), share("too-big", 100, gpu_mem=4001)) == set()


def test_whole_gpu_memory_is_the_least_each_gpu_must_have() -> None:
    state = cluster(node("t4", 1, gpu_mem=16_000), node("a100", 1, gpu_mem=80_000))
    assert passing(state, FitFilter(), whole("big-model", 1, gpu_mem=40_000)) == {"a100"}
    assert passing(state, FitFilter(), whole("small-model", 1, gpu_mem=16_000)) == {"t4", "a100"}


def test_a_gpu_request_never_fits_a_cpu_only_node() -> None:
    state = cluster(node("cpu-only", 0), node("gpu", 1))
    assert passing(state, FitFilter(), share("s", 1)) == {"gpu"}
    assert passing(state, FitFilter(), cpu_pod("c")) == {"cpu-only", "gpu"}


# ---- GPU type --------------------------------------------------------------------------------------------


def test_gpu_type_keeps_a_request_on_its_allowed_models() -> None:
    state = cluster(node("a", 1, gpu_type="A100"), node("t", 1, gpu_type="T4"), node("v", 1, gpu_type="V100"))
    assert passing(state, GpuTypeFilter(), share("s", 500, types={"T4"})) == {"t"}
    assert passing(state, GpuTypeFilter(), whole("w", 1, types={"T4", "V100"})) == {"t", "v"}
    assert passing(state, GpuTypeFilter(), whole("any", 1)) == {"a", "t", "v"}
    assert passing(state, GpuTypeFilter(), whole("none", 1, types={"H100"})) == set()


def test_gpu_type_does_not_restrict_cpu_only_requests() -> None:
    state = cluster(node("a", 1, gpu_type="A100"), node("c", 0))
    req = Request(name="c", cpu_milli=100, gpu_types=frozenset({"T4"}))
    assert passing(state, GpuTypeFilter(), req) == {"a", "c"}


# ---- topology -------------------------------------------------------------------------------------------


def test_tensor_parallel_needs_all_gpus_in_one_island() -> None:
    state = cluster(node("split", 4, islands=[0, 0, 1, 1]), node("one", 4, islands=[0, 0, 0, 0]))
    assert passing(state, TopologyFilter(), whole("tp4", 4, same_island=True)) == {"one"}
    assert passing(state, TopologyFilter(), whole("tp2", 2, same_island=True)) == {"split", "one"}
    assert passing(state, TopologyFilter(), whole("dp4", 4)) == {"split", "one"}  # no TP: any GPUs


def test_tensor_parallel_counts_only_free_gpus_of_the_island() -> None:
    state = cluster(node("n", 4, islands=[0, 0, 1, 1]))
    bind(state, whole("x", 1), "n", [0])
    bind(state, share("y", 10), "n", [2])
    assert passing(state, TopologyFilter(), whole("tp2", 2, same_island=True)) == set()
    state.unbind("y")
    assert passing(state, TopologyFilter(), whole("tp2", 2, same_island=True)) == {"n"}


# ---- health ---------------------------------------------------------------------------------------------


def test_an_unhealthy_node_offers_nothing() -> None:
    state = cluster(node("sick", 1, healthy=False), node("well", 1))
    assert passing(state, HealthFilter(), cpu_pod("c")) == {"well"}
    state.set_node_health(state.index["well"], False)
    decision = scheduler(state).decide(cpu_pod("c"))
    assert decision.placement is None and "2 by health" in decision.reason()
    state.set_node_health(state.index["sick"], True)
    assert passing(state, HealthFilter(), cpu_pod("c")) == {"sick"}


def test_an_unhealthy_gpu_offers_nothing() -> None:
    state = cluster(node("n", 2))
    state.set_gpu_health(0, 1, False)
    assert passing(state, FitFilter(), whole("one", 1)) == {"n"}
    assert passing(state, FitFilter(), whole("two", 2)) == set()
    assert int(state.gpu_free[0, 1]) == 0 and state.idle_milli()[0] == 1000
    state.set_gpu_health(0, 0, False)
    assert passing(state, FitFilter(), share("s", 1)) == set()
    state.set_gpu_health(0, 1, True)
    assert passing(state, FitFilter(), share("s", 1)) == {"n"}


def test_a_gpu_reported_unhealthy_in_the_inventory_offers_nothing() -> None:
    state = cluster(node("n", 2, sick_gpus=[0]))
    assert passing(state, FitFilter(), whole("two", 2)) == set()
    decision = scheduler(state).place(whole("one", 1))
    assert decision.placement is not None and decision.placement.gpus == (1,)


def test_an_unhealthy_gpu_keeps_what_runs_there_counted() -> None:
    state = cluster(node("n", 1))
    bind(state, share("s", 300), "n", [0])
    state.set_gpu_health(0, 0, False)
    state.set_gpu_health(0, 0, True)
    assert int(state.gpu_free[0, 0]) == 700


# ---- taints ---------------------------------------------------------------------------------------------


def _tainted() -> ClusterState:
    return cluster(
        node("plain", 1),
        node("reserved", 1, taints=[Taint("dedicated", "training")]),
        node("evicting", 1, taints=[Taint("maintenance", "", "NoExecute")]),
        node("soft", 1, taints=[Taint("spot", "true", "PreferNoSchedule")]),
    )


def test_taints_keep_off_requests_that_do_not_tolerate_them() -> None:
    state = _tainted()
    assert passing(state, TaintFilter(), share("s", 100)) == {"plain", "soft"}


def test_a_toleration_must_match_key_and_value() -> None:
    state = _tainted()
    exact = share("s", 100, tolerations=[Toleration("dedicated", "training")])
    wrong_value = share("s", 100, tolerations=[Toleration("dedicated", "serving")])
    wrong_key = share("s", 100, tolerations=[Toleration("spot", "training")])
    assert passing(state, TaintFilter(), exact) == {"plain", "reserved", "soft"}
    assert passing(state, TaintFilter(), wrong_value) == {"plain", "soft"}
    assert passing(state, TaintFilter(), wrong_key) == {"plain", "soft"}


def test_a_toleration_without_value_tolerates_any_value() -> None:
    state = _tainted()
    any_value = share("s", 100, tolerations=[Toleration("dedicated"), Toleration("maintenance")])
    assert passing(state, TaintFilter(), any_value) == {"plain", "reserved", "evicting", "soft"}


def test_a_node_needs_every_taint_tolerated() -> None:
    state = cluster(node("n", 1, taints=[Taint("a", "1"), Taint("b", "2")]))
    assert passing(state, TaintFilter(), share("s", 1, tolerations=[Toleration("a")])) == set()
    both = share("s", 1, tolerations=[Toleration("a"), Toleration("b", "2")])
    assert passing(state, TaintFilter(), both) == {"n"}


# ---- pools ----------------------------------------------------------------------------------------------


def test_pools_limit_a_request_to_its_allowed_pools() -> None:
    inventory = Inventory.from_pools(
        [
            PoolInventory("onprem", (node("a1", 1), node("a2", 1))),
            PoolInventory("cloud", (node("c1", 1),), region="eu", zone="eu-1"),
        ]
    )
    state = ClusterState(inventory)
    assert passing(state, PoolFilter(), share("s", 1, pools={"cloud"})) == {"c1"}
    assert passing(state, PoolFilter(), share("s", 1, pools={"onprem", "cloud"})) == {"a1", "a2", "c1"}
    assert passing(state, PoolFilter(), share("s", 1)) == {"a1", "a2", "c1"}
    assert passing(state, PoolFilter(), share("s", 1, pools={"nowhere"})) == set()
    assert inventory.nodes[2].zone == "eu-1" and inventory.nodes[2].region == "eu"
