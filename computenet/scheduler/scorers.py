"""ComputeNet's own scorers: packing, spreading, NVLink locality and price. Higher is better, 0..100."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .filters import fitting_gpus
from .inventory import MILLI_PER_GPU
from .request import Request
from .state import ClusterState, FloatArray, IndexArray


def used_after(state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
    """The share of a node's GPUs (its CPU, for a CPU-only request) in use once `req` is bound."""
    if req.num_gpu:
        cap = np.maximum(state.gpu_count[nodes] * MILLI_PER_GPU, 1)
        return 1 - (state.gpu_free[nodes].sum(axis=1) - req.gpu_demand_milli) / cap
    cap_cpu = np.maximum(state.cpu_cap[nodes], 1)
    return 1 - (state.cpu_free[nodes] - req.cpu_milli) / cap_cpu


@dataclass(frozen=True)
class BinpackScorer:
    """Most allocated wins: fill nodes before opening new ones."""

    name: str = "binpack"

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        return 100 * used_after(state, req, nodes)


@dataclass(frozen=True)
class LeastAllocatedScorer:
    """Least allocated wins: a node's failure takes down as little as possible."""

    name: str = "least-allocated"

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        return 100 * (1 - used_after(state, req, nodes))


@dataclass(frozen=True)
class TopologyScorer:
    """Whole-GPU requests take the NVLink island they fill most tightly, keeping larger islands whole.

    The score is the share of the tightest fitting island the request would use: 100 when it fills an
    island exactly. Shares and CPU-only requests score alike everywhere.
    """

    name: str = "topology"

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        if not req.num_gpu or req.is_share:
            return np.zeros(nodes.size)
        fits = fitting_gpus(state, req, nodes)
        islands = state.island[nodes]
        tightest = np.full(nodes.size, np.inf)
        for island in np.unique(islands[fits]):
            size = (fits & (islands == island)).sum(axis=1)
            tightest = np.where(size >= req.num_gpu, np.minimum(tightest, size), tightest)
        return np.where(np.isfinite(tightest), 100 * req.num_gpu / tightest, 0.0)


@dataclass(frozen=True)
class CostScorer:
    """The cheapest GPU-hour wins; free (unpriced) nodes count as the cheapest."""

    name: str = "cost"

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        price = state.price[nodes]
        top = price.max()
        if top <= 0:
            return np.zeros(nodes.size)
        return 100 * (1 - price / top)
