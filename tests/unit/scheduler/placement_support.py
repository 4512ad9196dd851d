"""Small clusters and state snapshots for the gang and defragmentation tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from computenet.scheduler.frag import TargetWorkload
from computenet.scheduler.framework import Scheduler
from computenet.scheduler.inventory import Gpu, Inventory, Node
from computenet.scheduler.policies import make_policy
from computenet.scheduler.request import Placement, Request
from computenet.scheduler.state import ClusterState

WORKLOAD = TargetWorkload.typical([Request("t", cpu_milli=1000, num_gpu=1, gpu_milli=1000)])


def node(
    name: str,
    gpus: int,
    *,
    cpu: int = 64_000,
    mem: int = 256_000,
    island_size: int = 0,
    pool: str = "default",
) -> Node:
    size = island_size or max(gpus, 1)
    return Node(
        name,
        cpu_milli=cpu,
        memory_mib=mem,
        gpus=tuple(Gpu(i, "A100", memory_mib=80_000, island=i // size) for i in range(gpus)),
        pool=pool,
    )


def cluster(*nodes: Node) -> ClusterState:
    return ClusterState(Inventory(nodes))


def scheduler(state: ClusterState, policy: str = "bestfit", seed: int = 0) -> Scheduler:
    return Scheduler(state, make_policy(policy, WORKLOAD), seed=seed)


def whole(name: str, num_gpu: int, *, cpu: int = 0, mem: int = 0, **kw: Any) -> Request:
    return Request(name, cpu_milli=cpu, memory_mib=mem, num_gpu=num_gpu, gpu_milli=1000, **kw)


def share(name: str, milli: int, **kw: Any) -> Request:
    return Request(name, num_gpu=1, gpu_milli=milli, **kw)


def bind(state: ClusterState, req: Request, node: int, gpus: tuple[int, ...] = ()) -> None:
    state.bind(Placement(req, node, gpus))


def snapshot(state: ClusterState) -> dict[str, Any]:
    """Everything placement reads, copied; `version` apart (it only ever grows)."""
    arrays = {k: v.copy() for k, v in vars(state).items() if isinstance(v, np.ndarray) and k != "version"}
    return {
        "arrays": arrays,
        "version": state.version.copy(),
        "placements": list(state.placements.items()),
        "node_pods": [set(pods) for pods in state.node_pods],
        "replicas": [(k, v.copy()) for k, v in state.replicas.items()],
    }


def assert_unchanged(state: ClusterState, before: dict[str, Any]) -> None:
    after = snapshot(state)
    assert after["arrays"].keys() == before["arrays"].keys()
    for key, value in before["arrays"].items():
        assert np.array_equal(after["arrays"][key], value), key
    assert after["placements"] == before["placements"]
    assert after["node_pods"] == before["node_pods"]
    assert [k for k, _ in after["replicas"]] == [k for k, _ in before["replicas"]]
    for (_, a), (_, b) in zip(after["replicas"], before["replicas"], strict=True):
        assert np.array_equal(a, b)
    assert (after["version"] >= before["version"]).all()
