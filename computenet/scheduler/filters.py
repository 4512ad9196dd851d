"""Filters: which nodes can take a request at all. Each returns one bool per node."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .inventory import MILLI_PER_GPU
from .request import Request
from .state import BoolArray, ClusterState


def fitting_gpus(
    state: ClusterState, req: Request, rows: slice | NDArray[np.intp] = slice(None)
) -> BoolArray:
    """Per node (of `rows`, default all) and GPU: could this GPU hold (its part of) `req`."""
    if req.is_share:
        return (state.gpu_free[rows] >= req.gpu_milli) & (state.gpu_mem_free[rows] >= req.gpu_memory_mib)
    return (state.gpu_free[rows] == MILLI_PER_GPU) & (state.gpu_mem_cap[rows] >= req.gpu_memory_mib)


@dataclass(frozen=True)
class FitFilter:
    """CPU, memory and GPU capacity: enough fully free GPUs, or one GPU with room for the share."""

    name: str = "fit"

    def feasible(self, state: ClusterState, req: Request) -> BoolArray:
        ok = (state.cpu_free >= req.cpu_milli) & (state.mem_free >= req.memory_mib)
        if req.num_gpu:
            ok &= fitting_gpus(state, req).sum(axis=1) >= req.num_gpu
        return ok


@dataclass(frozen=True)
class GpuTypeFilter:
    name: str = "gpu-type"

    def feasible(self, state: ClusterState, req: Request) -> BoolArray:
        if not req.num_gpu or not req.gpu_types:
            return np.ones(state.node_count, dtype=bool)
        return state.type_mask(req.gpu_types)


@dataclass(frozen=True)
class TopologyFilter:
    """A tensor-parallel request needs all its GPUs in one NVLink island."""

    name: str = "topology"

    def feasible(self, state: ClusterState, req: Request) -> BoolArray:
        if not req.same_island or req.num_gpu < 2:
            return np.ones(state.node_count, dtype=bool)
        fits = fitting_gpus(state, req)
        ok = np.zeros(state.node_count, dtype=bool)
        for island in np.unique(state.island[state.gpu_exists]):
            ok |= (fits & (state.island == island)).sum(axis=1) >= req.num_gpu
        return ok


@dataclass(frozen=True)
class HealthFilter:
    name: str = "health"

    def feasible(self, state: ClusterState, req: Request) -> BoolArray:
        return state.node_healthy.copy()


@dataclass(frozen=True)
class TaintFilter:
    """NoSchedule taints keep off every request that does not tolerate them."""

    name: str = "taints"

    def feasible(self, state: ClusterState, req: Request) -> BoolArray:
        ok = np.ones(state.node_count, dtype=bool)
        for i in state.tainted:
            for taint in state.inventory.nodes[i].taints:
                if taint.effect in ("NoSchedule", "NoExecute") and not any(
                    t.key == taint.key and t.value in (None, taint.value) for t in req.tolerations
                ):
                    ok[i] = False
                    break
        return ok


@dataclass(frozen=True)
class PoolFilter:
    name: str = "pool"

    def feasible(self, state: ClusterState, req: Request) -> BoolArray:
        if not req.pools:
            return np.ones(state.node_count, dtype=bool)
        allowed = np.array([name in req.pools for name in state.pool_names], dtype=bool)
        return allowed[state.node_pool]
