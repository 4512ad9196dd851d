"""Small hand-built inventories and requests for the scheduler's tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from computenet.scheduler.choosers import BestFitChooser
from computenet.scheduler.framework import Decision, Filter, Policy, Scheduler, Scorer, TieBreak
from computenet.scheduler.inventory import REGION_LABEL, ZONE_LABEL, Gpu, Inventory, Node, Taint
from computenet.scheduler.policies import default_filters
from computenet.scheduler.request import Placement, Request, Spread, Toleration
from computenet.scheduler.state import ClusterState


def node(
    name: str,
    gpus: int = 0,
    *,
    gpu_type: str = "A100",
    cpu: int = 64_000,
    mem: int = 256_000,
    gpu_mem: int = 80_000,
    islands: Sequence[int] | None = None,
    pool: str = "default",
    zone: str = "",
    region: str = "",
    price: float = 0.0,
    taints: Iterable[Taint] = (),
    healthy: bool = True,
    sick_gpus: Iterable[int] = (),
) -> Node:
    """A node with `gpus` GPUs of one model; `islands` gives each GPU's NVLink island (all 0 by default)."""
    sick = set(sick_gpus)
    island_of = list(islands) if islands is not None else [0] * gpus
    assert len(island_of) == gpus, "one island id per GPU"
    labels = {}
    if zone:
        labels[ZONE_LABEL] = zone
    if region:
        labels[REGION_LABEL] = region
    return Node(
        name=name,
        cpu_milli=cpu,
        memory_mib=mem,
        gpus=tuple(
            Gpu(index=i, type=gpu_type, memory_mib=gpu_mem, island=island_of[i], healthy=i not in sick)
            for i in range(gpus)
        ),
        pool=pool,
        labels=labels,
        price_per_gpu_hour=price,
        taints=tuple(taints),
        healthy=healthy,
    )


def cluster(*nodes: Node) -> ClusterState:
    return ClusterState(Inventory(tuple(nodes)))


def cpu_pod(
    name: str, cpu: int = 1000, *, mem: int = 0, deployment: str = "", spread: Spread | None = None
) -> Request:
    return Request(name=name, cpu_milli=cpu, memory_mib=mem, deployment=deployment, spread=spread)


def share(
    name: str,
    milli: int,
    *,
    cpu: int = 0,
    mem: int = 0,
    gpu_mem: int = 0,
    types: Iterable[str] = (),
    tolerations: Iterable[Toleration] = (),
    pools: Iterable[str] = (),
) -> Request:
    """A share of one GPU: `milli` < 1000."""
    return Request(
        name=name,
        cpu_milli=cpu,
        memory_mib=mem,
        num_gpu=1,
        gpu_milli=milli,
        gpu_memory_mib=gpu_mem,
        gpu_types=frozenset(types),
        tolerations=tuple(tolerations),
        pools=frozenset(pools),
    )


def whole(
    name: str,
    count: int = 1,
    *,
    cpu: int = 0,
    mem: int = 0,
    gpu_mem: int = 0,
    types: Iterable[str] = (),
    same_island: bool = False,
    deployment: str = "",
    spread: Spread | None = None,
) -> Request:
    """`count` whole GPUs."""
    return Request(
        name=name,
        cpu_milli=cpu,
        memory_mib=mem,
        num_gpu=count,
        gpu_milli=1000,
        gpu_memory_mib=gpu_mem,
        gpu_types=frozenset(types),
        same_island=same_island,
        deployment=deployment,
        spread=spread,
    )


def bind(state: ClusterState, req: Request, node_name: str, gpus: Sequence[int] = ()) -> Placement:
    """Bind `req` to named GPUs of a named node (the test decides where, not a policy)."""
    placement = Placement(req, state.index[node_name], tuple(gpus))
    state.bind(placement)
    return placement


def passing(state: ClusterState, flt: Filter, req: Request) -> set[str]:
    """Names of the nodes a filter lets `req` onto."""
    mask = flt.feasible(state, req)
    return {name for name, ok in zip(state.names, mask, strict=True) if ok}


def scores(
    state: ClusterState, scorer: Scorer, req: Request, names: Sequence[str] | None = None
) -> dict[str, float]:
    """A scorer's score per node name (all nodes unless `names` is given)."""
    chosen = list(names) if names is not None else state.names
    nodes = np.array([state.index[n] for n in chosen], dtype=np.intp)
    return {n: float(s) for n, s in zip(chosen, scorer.score(state, req, nodes), strict=True)}


def scheduler(
    state: ClusterState,
    *scorers: Scorer,
    filters: tuple[Filter, ...] | None = None,
    tie_break: TieBreak = "first",
    seed: int = 0,
) -> Scheduler:
    """A scheduler with the default filters, the given scorers (weight 1) and the best-fit chooser."""
    policy = Policy(
        "test",
        filters if filters is not None else default_filters(),
        tuple((s, 1.0) for s in scorers),
        BestFitChooser(),
        tie_break,
    )
    return Scheduler(state, policy, seed=seed)


def placed_on(state: ClusterState, decision: Decision) -> str:
    assert decision.placement is not None, decision.reason()
    return state.names[decision.placement.node]
