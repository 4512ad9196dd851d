"""The FGD paper's baseline scorers, as its artifact implements them.

The artifact is hkust-adsl/kubernetes-scheduler-simulator, `pkg/simulator/plugin/*_score.go`.

Each reproduces the artifact's integer arithmetic, because its truncation decides which nodes tie and
ties are broken at random. Resources are normalised by the largest node shape of the trace: 128 vCPU
and 8 GPUs. BestFit's min-max normalisation is left out: it maps distinct raw scores to distinct values
and so never changes the winner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .filters import fitting_gpus
from .inventory import MILLI_PER_GPU
from .request import Request
from .state import ClusterState, FloatArray, IndexArray, affinity_column

MAX_SPEC_CPU_MILLI = 128_000
MAX_SPEC_GPU_MILLI = 8 * MILLI_PER_GPU
MAX_SCORE = 100


@dataclass(frozen=True)
class RandomScorer:
    """Every feasible node alike: with random tie-breaking, a uniformly random feasible node."""

    name: str = "random"

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        return np.zeros(nodes.size)


@dataclass(frozen=True)
class DotProdScorer:
    """Tetris: the smallest dot product of free and requested (CPU, GPU) wins, i.e. the tightest fit."""

    name: str = "dotprod"

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        free_cpu = state.cpu_free[nodes] / MAX_SPEC_CPU_MILLI
        free_gpu = state.gpu_free[nodes].sum(axis=1) / MAX_SPEC_GPU_MILLI
        dot = free_cpu * (req.cpu_milli / MAX_SPEC_CPU_MILLI) + free_gpu * (
            req.gpu_demand_milli / MAX_SPEC_GPU_MILLI
        )
        return np.trunc(MAX_SCORE * (1 - dot / 2))


@dataclass(frozen=True)
class BestFitScorer:
    """The least (CPU, GPU) left over after the bind wins."""

    name: str = "bestfit"

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        left_cpu = (state.cpu_free[nodes] - req.cpu_milli) / MAX_SPEC_CPU_MILLI
        left_gpu = (state.gpu_free[nodes].sum(axis=1) - req.gpu_demand_milli) / MAX_SPEC_GPU_MILLI
        return np.trunc(MAX_SCORE * (1 - (0.5 * left_cpu + 0.5 * left_gpu)))


@dataclass(frozen=True)
class GpuClusteringScorer:
    """Keep pods of one GPU class (share, 1, 2, 4, 8 GPUs) together, then prefer fuller nodes."""

    name: str = "gpuclustering"

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        if not req.num_gpu:
            return np.zeros(nodes.size)
        affinity = state.affinity[nodes] > 0
        classes = affinity.sum(axis=1)
        mine = affinity[:, affinity_column(req)]
        base = np.select([mine & (classes == 1), mine, classes == 0], [75, 50, 25], default=0)
        used = MAX_SPEC_GPU_MILLI - state.gpu_free[nodes].sum(axis=1)
        return (base + (MAX_SCORE // 4) * used // MAX_SPEC_GPU_MILLI).astype(np.float64)


@dataclass(frozen=True)
class GpuPackingScorer:
    """Prefer, in order: partly used GPUs, free GPUs of partly used nodes, then wholly free nodes."""

    name: str = "gpupacking"

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        if not req.num_gpu:
            return np.zeros(nodes.size)
        free = state.gpu_free[nodes]
        count = state.gpu_count[nodes]
        fully_free = (free == MILLI_PER_GPU).sum(axis=1)
        # case 3: every GPU of the node is free
        whole_node = np.maximum(MAX_SCORE // 3 - fully_free, fully_free)
        if req.is_share:
            fits = fitting_gpus(state, req, nodes)
            tightest = np.where(fits, free, MILLI_PER_GPU + 1).min(axis=1)
            on_used = tightest < MILLI_PER_GPU
            shared = np.maximum(MAX_SCORE - (tightest * 100 // MILLI_PER_GPU) // 10, MAX_SCORE // 2)
            partly = np.where(on_used, shared, MAX_SCORE // 2 - 1)
        else:
            partly = np.full(nodes.size, max(MAX_SCORE // 2 - req.num_gpu, MAX_SCORE // 3))
        return np.where(fully_free == count, whole_node, partly).astype(np.float64)
