"""Where the reconciler puts replicas: the scheduler over every pool's nodes, without processes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from computenet.api import Deployment, Model, NodeInfo, load_text
from computenet.control.desired import desired_replicas
from computenet.control.fleet import PoolView, fleet_inventory, parse_taint
from computenet.control.placement import PlacementResult, place_replicas
from computenet.control.plan import Plan, plan
from computenet.pools import ReplicaPhase, ReplicaSpec, ReplicaState


def _deployment(replicas: int = 1, resources: str = "{gpus: 1}", placement: str = "{}") -> Deployment:
    (dep,) = load_text(f"""
kind: Deployment
metadata: {{name: web}}
spec: {{model: llm, engine: sim, placement: {placement}, roles: [{{replicas: {replicas}, resources: {resources}}}]}}
""")
    assert isinstance(dep, Deployment)
    return dep


MODEL = Model.model_validate({"metadata": {"name": "llm"}, "spec": {"source": "sim://llm"}})


def _gpu_node(name: str, gpus: int, gpu_type: str, *, ready: bool = True) -> NodeInfo:
    return NodeInfo(name=name, cpu=32, memory_gb=256, gpus=gpus, gpu_type=gpu_type, ready=ready)


def _fleet(*, us_ready: bool = True) -> list[PoolView]:
    return [
        PoolView("us", "us-east", "us-east-1a", (_gpu_node("h100", 2, "H100", ready=us_ready),)),
        PoolView("eu", "eu-west", "eu-west-1b", (_gpu_node("a10g", 4, "A10G"),), {"A10G": 1.2}),
    ]


def _running(spec: ReplicaSpec, pool: str, phase: ReplicaPhase = ReplicaPhase.READY) -> ReplicaState:
    return ReplicaState(spec=spec, pool=pool, phase=phase, node=spec.node)


def _place(
    dep: Deployment, running: list[ReplicaState] | None = None, fleet: list[PoolView] | None = None
) -> tuple[Plan, PlacementResult]:
    specs = desired_replicas(dep, MODEL)
    decision = plan(specs, running or [])
    kept = [s for s in running or [] if s.name not in decision.stop]
    return decision, place_replicas(decision.start, kept, fleet or _fleet(), {dep.name: dep})


def test_a_gpu_model_request_lands_on_a_node_of_that_model_with_gpu_ids() -> None:
    _, result = _place(_deployment(resources="{gpus: 2, gpuType: A10G}"))
    (assignment,) = result.start
    assert (assignment.pool, assignment.spec.node, len(assignment.spec.gpu_ids)) == ("eu", "a10g", 2)


def test_running_replicas_keep_their_gpus_and_new_ones_take_others() -> None:
    dep = _deployment(replicas=2, resources="{gpus: 1, gpuType: H100}")
    first = replace(desired_replicas(dep, MODEL)[0], node="h100", gpu_ids=(0,))
    _, result = _place(dep, [_running(first, "us")])
    (second,) = result.start
    assert (second.spec.name, second.pool, second.spec.gpu_ids) == ("web-server-1", "us", (1,))


def test_a_deployment_that_fits_nowhere_is_unschedulable_with_the_reason() -> None:
    _, result = _place(_deployment(replicas=3, resources="{gpus: 1, gpuType: H100}"))
    assert [a.spec.name for a in result.start] == ["web-server-0", "web-server-1"]
    assert "web-server-2: no node fits" in result.unschedulable["web"]


def test_a_replica_on_a_lost_node_is_stopped_and_placed_on_a_live_one() -> None:
    dep = _deployment(resources="{gpus: 1}")
    spec = replace(desired_replicas(dep, MODEL)[0], node="h100", gpu_ids=(0,))
    decision, result = _place(dep, [_running(spec, "us", ReplicaPhase.LOST)], _fleet(us_ready=False))
    assert decision.stop == ["web-server-0"]
    (moved,) = result.start
    assert (moved.pool, moved.spec.node) == ("eu", "a10g")


def test_regions_restrict_the_pools_and_an_empty_match_says_which_pools_exist() -> None:
    _, result = _place(_deployment(placement="{regions: [eu-west]}"))
    assert [a.pool for a in result.start] == ["eu"]
    _, nowhere = _place(_deployment(placement="{regions: [ap-south]}"))
    assert not nowhere.start
    assert (
        "regions=['ap-south']" in nowhere.unschedulable["web"]
        and "us (us-east)" in nowhere.unschedulable["web"]
    )


def test_a_deployment_whose_pools_report_no_ready_node_says_so() -> None:
    fleet = [
        PoolView("us", "us-east", "a", (_gpu_node("h100", 2, "H100"),)),
        PoolView("eu", "eu-west", "b", ()),
    ]
    _, result = _place(_deployment(placement="{regions: [eu-west]}"), fleet=fleet)
    assert not result.start
    assert result.unschedulable["web"].startswith("the pools it may use (eu) report no ready node")


def test_spread_puts_each_replica_on_another_node() -> None:
    fleet = [PoolView("ray", "us", "a", (_gpu_node("n1", 4, "A10G"), _gpu_node("n2", 4, "A10G")))]
    _, packed = _place(_deployment(replicas=2), fleet=fleet)
    _, spread = _place(_deployment(replicas=2, placement="{spread: {key: node}}"), fleet=fleet)
    assert len({a.spec.node for a in packed.start}) == 1  # utilization packs
    assert {a.spec.node for a in spread.start} == {"n1", "n2"}


def test_cost_policy_prefers_the_cheaper_pool() -> None:
    fleet = [
        PoolView("a", "r1", "z", (_gpu_node("n", 4, "L4"),), {"L4": 2.0}),
        PoolView("b", "r2", "z", (_gpu_node("n", 4, "L4"),), {"L4": 0.5}),
    ]
    _, result = _place(_deployment(placement="{policy: cost}"), fleet=fleet)
    assert [a.pool for a in result.start] == ["b"]


def test_fleet_inventory_names_nodes_by_pool_and_labels_region_and_price() -> None:
    inventory = fleet_inventory(_fleet())
    eu = inventory.nodes[1]
    assert (eu.name, eu.region, eu.zone, eu.price_per_gpu_hour) == ("eu/a10g", "eu-west", "eu-west-1b", 1.2)
    assert len(eu.gpus) == 4


@pytest.mark.parametrize(
    ("text", "key", "value", "effect"),
    [
        ("gpu=bad:NoSchedule", "gpu", "bad", "NoSchedule"),
        ("dedicated:NoExecute", "dedicated", "", "NoExecute"),
    ],
)
def test_taints_parse_as_kubectl_prints_them(text: str, key: str, value: str, effect: str) -> None:
    taint = parse_taint(text)
    assert (taint.key, taint.value, taint.effect) == (key, value, effect)
