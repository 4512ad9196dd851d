"""Where new replicas go: the GPU scheduler over every pool's nodes at once. Pure.

Each reconcile pass rebuilds the scheduler's view from facts — the nodes pools report now and the
replicas that keep running (bound where they run) — then places the replicas that must start, one at a
time in a fixed order, with each deployment's policy preset. Rebuilding costs little at fleet sizes and
means no placement state can drift from what pools report: a node that died is simply unhealthy in the
next pass, and its replicas, reported `Lost`, are placed elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from computenet.api import Deployment
from computenet.pools import ReplicaSpec, ReplicaState
from computenet.scheduler.frag import TargetWorkload
from computenet.scheduler.framework import Scheduler
from computenet.scheduler.policies import make_policy
from computenet.scheduler.request import Placement, Request
from computenet.scheduler.state import CapacityError, ClusterState

from .fleet import PoolView, fleet_inventory, node_key, replica_request, split_node_key

ROLE_ORDER = {"router": 0, "prefill": 1, "decode": 2, "server": 3}


@dataclass(frozen=True)
class Assignment:
    pool: str
    spec: ReplicaSpec  # with `node` and `gpu_ids` filled in


@dataclass(frozen=True)
class PlacementResult:
    start: list[Assignment] = field(default_factory=list)
    unschedulable: dict[str, str] = field(default_factory=dict)
    """Per deployment: why its first replica that found no place did not."""


def allowed_pools(dep: Deployment, pools: Sequence[PoolView]) -> frozenset[str]:
    """The pools a deployment may use: named in `placement.pools` (or any) and in `placement.regions`."""
    placement = dep.spec.placement
    return frozenset(
        p.name
        for p in pools
        if (not placement.pools or p.name in placement.pools)
        and (not placement.regions or p.region in placement.regions)
    )


def place_replicas(
    pending: Sequence[ReplicaSpec],
    running: Sequence[ReplicaState],
    pools: Sequence[PoolView],
    deployments: Mapping[str, Deployment],
) -> PlacementResult:
    """Assign a pool, node and GPUs to each pending replica, around the running ones."""
    state = ClusterState(fleet_inventory(pools))
    allowed = {name: allowed_pools(dep, pools) for name, dep in deployments.items()}

    def request(spec: ReplicaSpec) -> Request:
        return replica_request(spec, deployments[spec.deployment], allowed[spec.deployment])

    kept = [s for s in running if s.spec.deployment in deployments]
    workload = TargetWorkload.typical([request(s.spec) for s in kept] + [request(s) for s in pending])
    schedulers: dict[str, Scheduler] = {}

    def scheduler(policy: str) -> Scheduler:
        if policy not in schedulers:
            schedulers[policy] = Scheduler(state, make_policy(policy, workload))
        return schedulers[policy]

    for replica in kept:
        _bind_running(state, request(replica.spec), replica, scheduler("utilization"))
    result = PlacementResult()
    live = {p.name for p in pools if any(n.ready for n in p.nodes)}
    for spec in sorted(pending, key=_order):
        dep = deployments[spec.deployment]
        if not allowed[spec.deployment]:
            result.unschedulable.setdefault(spec.deployment, _no_pool_reason(dep, pools))
            continue
        if not allowed[spec.deployment] & live:
            names = ", ".join(sorted(allowed[spec.deployment]))
            reason = f"the pools it may use ({names}) report no ready node; `computenet get pools` says why"
            result.unschedulable.setdefault(spec.deployment, reason)
            continue
        decision = scheduler(dep.spec.placement.policy).place(request(spec))
        if decision.placement is None:
            result.unschedulable.setdefault(spec.deployment, f"{spec.name}: {decision.reason()}")
            continue
        pool, node = split_node_key(state.names[decision.placement.node])
        result.start.append(Assignment(pool, replace(spec, node=node, gpu_ids=decision.placement.gpus)))
    return result


def _bind_running(state: ClusterState, req: Request, replica: ReplicaState, scheduler: Scheduler) -> None:
    """Count a running replica where it runs, so that nothing new is put on its GPUs."""
    node = state.index.get(node_key(replica.pool, replica.node))
    if node is None:
        return  # a pool that does not report nodes, or a replica adopted before its node was seen
    gpus = replica.spec.gpu_ids
    try:
        if len(gpus) != req.num_gpu:  # adopted without GPU ids: count it on the GPUs the chooser would take
            gpus = scheduler.policy.chooser.choose(state, req, node, np.random.default_rng(0))
        state.bind(Placement(req, node, tuple(gpus)))
    except (CapacityError, ValueError, IndexError):
        pass  # over-committed by hand or by a shrunken node; it runs, and new replicas go elsewhere


def _order(spec: ReplicaSpec) -> tuple[str, int, int]:
    ordinal = spec.name.rsplit("-", 1)[-1]
    return spec.deployment, ROLE_ORDER.get(spec.role, 9), int(ordinal) if ordinal.isdigit() else 0


def _no_pool_reason(dep: Deployment, pools: Sequence[PoolView]) -> str:
    placement = dep.spec.placement
    known = ", ".join(f"{p.name} ({p.region})" for p in pools) or "none"
    return (
        f"no pool matches placement pools={placement.pools or 'any'} regions={placement.regions or 'any'}; "
        f"pools here: {known}"
    )
