"""Spread constraints as Kubernetes PodTopologySpread with whenUnsatisfiable: DoNotSchedule."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from computenet.scheduler.request import Request, Spread, SpreadKey
from computenet.scheduler.scorers import BinpackScorer
from computenet.scheduler.spread import SpreadFilter
from computenet.scheduler.state import ClusterState

from .builders import bind, cluster, node, passing, placed_on, scheduler, whole


def replica(i: int, key: SpreadKey = "node", skew: int = 1, deployment: str = "web") -> Request:
    return whole(f"{deployment}-{i}", 1, deployment=deployment, spread=Spread(key, skew))


def per(state: ClusterState, key: SpreadKey, deployment: str = "web") -> Counter[str]:
    """Replicas of a deployment per node name or zone."""
    out: Counter[str] = Counter()
    for placement in state.placements.values():
        if placement.request.deployment == deployment:
            n = state.inventory.nodes[placement.node]
            out[n.name if key == "node" else n.zone if key == "zone" else n.region] += 1
    return out


def test_node_spread_overrides_packing() -> None:
    state = cluster(node("a", 4), node("b", 4), node("c", 4))
    sched = scheduler(state, BinpackScorer())
    for i in range(6):
        sched.place(replica(i))
        counts = [per(state, "node")[n] for n in state.names]
        assert max(counts) - min(counts) <= 1, counts
    assert per(state, "node") == {"a": 2, "b": 2, "c": 2}
    # without the constraint the same scorer packs
    packed = cluster(node("a", 4), node("b", 4), node("c", 4))
    for i in range(4):
        scheduler(packed, BinpackScorer()).place(whole(f"web-{i}", 1, deployment="web"))
    assert per(packed, "node") == {"a": 4}


def test_zone_spread_balances_zones_not_nodes() -> None:
    state = cluster(
        node("a1", 2, zone="a"), node("a2", 2, zone="a"), node("a3", 2, zone="a"), node("b1", 4, zone="b")
    )
    sched = scheduler(state, BinpackScorer())
    placed = [placed_on(state, sched.place(replica(i, "zone"))) for i in range(4)]
    assert per(state, "zone") == {"a": 2, "b": 2}
    assert placed[1] == "b1"  # the second replica may not join the first in zone a


def test_a_zone_without_replicas_sets_the_floor() -> None:
    state = cluster(node("a1", 4, zone="a"), node("b1", 4, zone="b"), node("c1", 4, zone="c"))
    bind(state, replica(0, "zone"), "a1", [0])
    bind(state, replica(1, "zone"), "b1", [0])
    assert passing(state, SpreadFilter(), replica(2, "zone")) == {"c1"}
    bind(state, replica(2, "zone"), "c1", [0])
    assert passing(state, SpreadFilter(), replica(3, "zone")) == {"a1", "b1", "c1"}


def test_max_skew_allows_that_many_extra_replicas() -> None:
    state = cluster(node("a", 4), node("b", 4))
    bind(state, replica(0, skew=2), "a", [0])
    assert passing(state, SpreadFilter(), replica(1, skew=2)) == {"a", "b"}
    bind(state, replica(1, skew=2), "a", [1])
    assert passing(state, SpreadFilter(), replica(2, skew=2)) == {"b"}


def test_do_not_schedule_leaves_the_replica_pending() -> None:
    state = cluster(node("a1", 4, zone="a"), node("a2", 4, zone="a"), node("b1", 1, zone="b"))
    bind(state, whole("batch", 1), "b1", [0])  # zone b is full
    sched = scheduler(state, BinpackScorer())
    assert placed_on(state, sched.place(replica(0, "zone"))) in {"a1", "a2"}
    decision = sched.place(replica(1, "zone"))
    assert decision.placement is None
    assert decision.rejected_by["fit"] == 1 and decision.rejected_by["spread"] == 2
    assert "2 by spread" in decision.reason()


def test_unhealthy_domains_do_not_hold_the_floor_down() -> None:
    state = cluster(node("a1", 4, zone="a"), node("b1", 4, zone="b", healthy=False))
    bind(state, replica(0, "zone"), "a1", [0])
    assert passing(state, SpreadFilter(), replica(1, "zone")) == {"a1", "b1"}
    state.set_node_health(1, True)
    assert passing(state, SpreadFilter(), replica(1, "zone")) == {"b1"}


def test_region_spread() -> None:
    state = cluster(
        node("eu1", 4, region="eu", zone="eu-1"),
        node("eu2", 4, region="eu", zone="eu-2"),
        node("us1", 4, region="us"),
    )
    bind(state, replica(0, "region"), "eu1", [0])
    assert passing(state, SpreadFilter(), replica(1, "region")) == {"us1"}
    assert passing(state, SpreadFilter(), replica(1, "zone")) == {"eu2", "us1"}


def test_only_replicas_of_the_same_deployment_count() -> None:
    state = cluster(node("a", 4), node("b", 4))
    bind(state, replica(0, deployment="api"), "a", [0])
    bind(state, replica(1, deployment="api"), "a", [1])
    assert passing(state, SpreadFilter(), replica(0)) == {"a", "b"}
    assert passing(state, SpreadFilter(), replica(2, deployment="api")) == {"b"}
    no_deployment = whole("loose", 1, spread=Spread("node", 1))
    assert passing(state, SpreadFilter(), no_deployment) == {"a", "b"}


def test_unbinding_a_replica_frees_its_domain() -> None:
    state = cluster(node("a", 4), node("b", 4))
    bind(state, replica(0), "a", [0])
    assert passing(state, SpreadFilter(), replica(1)) == {"b"}
    state.unbind("web-0")
    assert passing(state, SpreadFilter(), replica(1)) == {"a", "b"}


def test_zones_without_the_requested_gpu_model_do_not_hold_the_floor_down() -> None:
    # as Kubernetes' default nodeAffinityPolicy: Honor: only nodes matching the request's node selectors
    # (its GPU models, its pools) count for the skew
    state = cluster(
        node("t4", 4, gpu_type="T4", zone="a"),
        node("b1", 4, gpu_type="A100", zone="b"),
        node("c1", 4, gpu_type="A100", zone="c"),
    )
    sched = scheduler(state, BinpackScorer())
    for i in range(6):
        req = whole(f"web-{i}", 1, types={"A100"}, deployment="web", spread=Spread("zone", 1))
        assert sched.place(req).placement is not None, i
        counts = per(state, "zone")
        assert abs(counts["b"] - counts["c"]) <= 1
    assert per(state, "zone") == {"b": 3, "c": 3}


def test_nodes_outside_the_requested_pools_do_not_hold_the_floor_down() -> None:
    state = cluster(
        node("onprem", 4, zone="a"),
        node("c1", 4, zone="b", pool="cloud"),
        node("c2", 4, zone="b", pool="cloud"),
    )
    api = Request("api-0", num_gpu=1, gpu_milli=1000, pools=frozenset({"cloud"}), deployment="api")
    by_node = replace(api, spread=Spread("node", 1))
    bind(state, by_node, "c1", [0])
    assert passing(state, SpreadFilter(), replace(by_node, name="api-1")) == {"onprem", "c2"}
    bind(state, replace(by_node, name="api-1"), "c2", [0])
    assert passing(state, SpreadFilter(), replace(by_node, name="api-2")) == {"onprem", "c1", "c2"}
    by_zone = replace(api, name="api-2", spread=Spread("zone", 1))
    assert passing(state, SpreadFilter(), by_zone) == {"onprem", "c1", "c2"}  # zone a is no domain of api's


def test_nodes_without_enough_gpus_do_not_hold_the_floor_down() -> None:
    # a Ray cluster's GPU-less head is a node too: a GPU replica can never land there, so it must not
    # count as an empty domain that keeps every replica off the one GPU node left
    state = cluster(node("head", 0), node("gpu", 4))
    bind(state, replica(0), "gpu", [0])
    assert "gpu" in passing(state, SpreadFilter(), replica(1))  # (the head fails the fit filter, not this)
    cpu_only = replace(replica(1), num_gpu=0, gpu_milli=0)
    assert passing(state, SpreadFilter(), cpu_only) == {"head"}  # a CPU replica still spreads to the head
