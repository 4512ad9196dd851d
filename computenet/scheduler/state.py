"""The cluster as arrays: what is free on every node and GPU, and what is bound where.

Every filter and scorer reads these arrays for all nodes at once (numpy), which is what keeps a decision
on the 1213-node trace cluster to a few milliseconds in Python. Only `bind` and `unbind` change them, and
each change bumps the node's `version`, so scorers may cache per-node results and recompute only the
nodes that changed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .inventory import MILLI_PER_GPU, Inventory
from .request import Placement, Request

AFFINITY_COLUMNS = 9
"""GPU-pod classes counted per node: column 0 is GPU sharing, column k is k whole GPUs (k <= 8)."""

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]


class CapacityError(RuntimeError):
    """A bind that would overdraw a node or GPU: a scheduler bug, never a user error."""


def affinity_column(req: Request) -> int:
    return 0 if req.is_share else min(req.num_gpu, AFFINITY_COLUMNS - 1)


class ClusterState:
    def __init__(self, inventory: Inventory) -> None:
        nodes = inventory.nodes
        self.inventory = inventory
        self.names = [node.name for node in nodes]
        self.index = {name: i for i, name in enumerate(self.names)}
        n = len(nodes)
        g = max((len(node.gpus) for node in nodes), default=0) or 1
        self.cpu_cap = np.array([node.cpu_milli for node in nodes], dtype=np.int64)
        self.mem_cap = np.array([node.memory_mib for node in nodes], dtype=np.int64)
        self.cpu_free = self.cpu_cap.copy()
        self.mem_free = self.mem_cap.copy()
        self.gpu_count = np.array([len(node.gpus) for node in nodes], dtype=np.int64)
        self.type_names = sorted({node.gpu_type for node in nodes})
        type_id = {name: i for i, name in enumerate(self.type_names)}
        self.node_type = np.array([type_id[node.gpu_type] for node in nodes], dtype=np.int64)
        self.node_healthy = np.array([node.healthy for node in nodes], dtype=bool)
        self.price = np.array([node.price_per_gpu_hour for node in nodes], dtype=np.float64)
        self.pool_names, self.node_pool = _ids([node.pool for node in nodes])
        self.zone_names, self.node_zone = _ids([f"{node.region}/{node.zone}" for node in nodes])
        self.region_names, self.node_region = _ids([node.region for node in nodes])
        self.tainted = [i for i, node in enumerate(nodes) if node.taints]
        self.gpu_exists = np.zeros((n, g), dtype=bool)
        self.gpu_healthy = np.zeros((n, g), dtype=bool)
        self.island = np.zeros((n, g), dtype=np.int64)
        self.gpu_mem_cap = np.zeros((n, g), dtype=np.int64)
        for i, node in enumerate(nodes):
            for gpu in node.gpus:
                self.gpu_exists[i, gpu.index] = True
                self.gpu_healthy[i, gpu.index] = gpu.healthy
                self.island[i, gpu.index] = gpu.island
                self.gpu_mem_cap[i, gpu.index] = gpu.memory_mib
        self.gpu_alloc = np.zeros((n, g), dtype=np.int64)
        self.gpu_mem_alloc = np.zeros((n, g), dtype=np.int64)
        self.gpu_free = np.zeros((n, g), dtype=np.int64)
        self.gpu_mem_free = np.zeros((n, g), dtype=np.int64)
        self._refresh_gpus(np.arange(n))
        self.affinity = np.zeros((n, AFFINITY_COLUMNS), dtype=np.int64)
        self.version = np.zeros(n, dtype=np.int64)
        self.placements: dict[str, Placement] = {}
        self.node_pods: list[set[str]] = [set() for _ in range(n)]
        self.replicas: dict[str, IntArray] = {}
        """Per deployment: how many of its replicas each node holds (what spread constraints count)."""

    # ---- reading -------------------------------------------------------------------------------------

    @property
    def node_count(self) -> int:
        return len(self.names)

    @property
    def gpu_capacity_milli(self) -> int:
        return int(self.gpu_exists.sum()) * MILLI_PER_GPU

    @property
    def gpu_allocated_milli(self) -> int:
        return int(self.gpu_alloc.sum())

    def idle_milli(self) -> IntArray:
        """Schedulable free GPU milli per node."""
        return self.gpu_free.sum(axis=1)

    def type_mask(self, types: frozenset[str]) -> BoolArray:
        """Nodes whose GPU model is in `types` (all nodes when empty)."""
        if not types:
            return np.ones(self.node_count, dtype=bool)
        allowed = np.array([name in types for name in self.type_names], dtype=bool)
        return allowed[self.node_type]

    # ---- changing ------------------------------------------------------------------------------------

    def bind(self, placement: Placement) -> None:
        req, node = placement.request, placement.node
        if not 0 <= node < self.node_count:
            raise CapacityError(f"{req.name}: no node {node} in a cluster of {self.node_count}")
        if req.name in self.placements:
            raise CapacityError(
                f"{req.name} is already bound to {self.names[self.placements[req.name].node]}"
            )
        if len(placement.gpus) != req.num_gpu:
            raise CapacityError(f"{req.name} needs {req.num_gpu} GPUs, placement names {placement.gpus}")
        if len(set(placement.gpus)) != len(placement.gpus) or not all(
            0 <= gpu < self.gpu_count[node] for gpu in placement.gpus
        ):
            raise CapacityError(
                f"{req.name}: GPUs {placement.gpus} are not distinct GPUs of {self.names[node]}"
            )
        if self.cpu_free[node] < req.cpu_milli or self.mem_free[node] < req.memory_mib:
            raise CapacityError(f"{req.name} does not fit the CPU or memory left on {self.names[node]}")
        for gpu in placement.gpus:
            if self.gpu_free[node, gpu] < req.gpu_milli or self.gpu_mem_free[node, gpu] < self._mem_take(
                req, node, gpu
            ):
                raise CapacityError(f"{req.name} does not fit GPU {gpu} of {self.names[node]}")
        self._apply(placement, +1)
        self.placements[req.name] = placement
        self.node_pods[node].add(req.name)

    def unbind(self, name: str) -> Placement:
        placement = self.placements.pop(name)
        self.node_pods[placement.node].discard(name)
        self._apply(placement, -1)
        return placement

    def set_gpu_health(self, node: int, gpu: int, healthy: bool) -> None:
        """A sick GPU offers nothing to new requests; what runs there is the control loop's to move."""
        self.gpu_healthy[node, gpu] = healthy
        self._refresh_gpus(np.array([node]))
        self.version[node] += 1

    def set_node_health(self, node: int, healthy: bool) -> None:
        self.node_healthy[node] = healthy
        self.version[node] += 1

    def _mem_take(self, req: Request, node: int, gpu: int) -> int:
        """GPU memory a request holds: a share carves its part, a whole GPU takes all of it."""
        return req.gpu_memory_mib if req.is_share else int(self.gpu_mem_cap[node, gpu])

    def _apply(self, placement: Placement, sign: int) -> None:
        req, node = placement.request, placement.node
        self.cpu_free[node] -= sign * req.cpu_milli
        self.mem_free[node] -= sign * req.memory_mib
        for gpu in placement.gpus:
            self.gpu_alloc[node, gpu] += sign * req.gpu_milli
            self.gpu_mem_alloc[node, gpu] += sign * self._mem_take(req, node, gpu)
        if req.num_gpu:
            self.affinity[node, affinity_column(req)] += sign
        if req.deployment:
            counts = self.replicas.setdefault(req.deployment, np.zeros(self.node_count, dtype=np.int64))
            counts[node] += sign
        self._refresh_gpus(np.array([node]))
        self.version[node] += 1

    def _refresh_gpus(self, rows: NDArray[np.intp]) -> None:
        usable = self.gpu_exists[rows] & self.gpu_healthy[rows]
        self.gpu_free[rows] = np.where(usable, MILLI_PER_GPU - self.gpu_alloc[rows], 0)
        self.gpu_mem_free[rows] = np.where(usable, self.gpu_mem_cap[rows] - self.gpu_mem_alloc[rows], 0)


def _ids(values: list[str]) -> tuple[list[str], IntArray]:
    names = sorted(set(values))
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index[v] for v in values], dtype=np.int64)
