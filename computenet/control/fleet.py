"""The fleet as the scheduler sees it: pools' nodes and replicas' needs in the scheduler's terms. Pure.

Pool drivers report `NodeInfo` (an api type, so pools need not import the scheduler); this module turns
every pool's nodes into one `Inventory` labelled with region, zone, pool and price, and every replica
spec into a scheduler `Request`. Node names are prefixed with their pool (`pool/node`) because two
pools may well both have a node called `gpu-0`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from computenet.api import Deployment, NodeInfo
from computenet.pools import ReplicaSpec
from computenet.scheduler.inventory import Gpu, Inventory, Node, PoolInventory, Taint
from computenet.scheduler.request import Request, Spread

POOL_LABEL = "computenet.io/pool"


@dataclass(frozen=True)
class PoolView:
    """One pool's facts for a placement pass: where it is, what it charges, its nodes."""

    name: str
    region: str
    zone: str
    nodes: tuple[NodeInfo, ...]
    price_per_gpu_hour: Mapping[str, float] = field(default_factory=dict)


def node_key(pool: str, node: str) -> str:
    return f"{pool}/{node}"


def split_node_key(key: str) -> tuple[str, str]:
    pool, _, node = key.partition("/")
    return pool, node


def fleet_inventory(pools: Iterable[PoolView]) -> Inventory:
    return Inventory.from_pools(
        PoolInventory(
            name=pool.name,
            region=pool.region,
            zone=pool.zone,
            nodes=tuple(_node(pool, info) for info in pool.nodes),
        )
        for pool in pools
    )


def _node(pool: PoolView, info: NodeInfo) -> Node:
    island = info.nvlink_island_size
    gpus = tuple(
        Gpu(
            index=i,
            type=info.gpu_type,
            memory_mib=int(info.gpu_memory_gb * 1024),
            island=i // island if island else 0,
            healthy=i not in info.unhealthy_gpus,
        )
        for i in range(info.gpus)
    )
    return Node(
        name=node_key(pool.name, info.name),
        cpu_milli=int(info.cpu * 1000),
        memory_mib=int(info.memory_gb * 1024),
        gpus=gpus,
        labels={**info.labels, POOL_LABEL: pool.name},
        price_per_gpu_hour=pool.price_per_gpu_hour.get(info.gpu_type, 0.0),
        taints=tuple(parse_taint(t) for t in info.taints),
        healthy=info.ready,
    )


def parse_taint(text: str) -> Taint:
    """`key=value:Effect` (or `key:Effect`, as kubectl prints them) into a Taint."""
    head, _, effect = text.rpartition(":")
    if not head:
        head, effect = text, "NoSchedule"
    key, _, value = head.partition("=")
    return Taint(key=key, value=value, effect=effect)


def replica_request(spec: ReplicaSpec, deployment: Deployment, pools: frozenset[str]) -> Request:
    """What one replica asks of the fleet. `pools` are the pools its deployment may use."""
    resources = next(r.resources for r in deployment.spec.roles if r.name == spec.role)
    spread = deployment.spec.placement.spread
    return Request(
        name=spec.name,
        cpu_milli=int((spec.cpu or 0) * 1000),
        memory_mib=int((spec.memory_gb or 0) * 1024),
        num_gpu=spec.gpus,
        gpu_milli=1000 if spec.gpus else 0,
        gpu_memory_mib=int((resources.gpu_memory_gb or 0) * 1024),
        gpu_types=frozenset({spec.gpu_type}) if spec.gpu_type else frozenset(),
        same_island=spec.gpus > 1,
        deployment=f"{spec.deployment}/{spec.role}",
        spread=Spread(key=spread.key, max_skew=spread.max_skew) if spread is not None else None,
        pools=pools,
    )
