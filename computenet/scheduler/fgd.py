"""FGD: place each request where the cluster's fragmentation grows least (steepest descent).

For every feasible node the scorer forms the state after the bind (for a GPU share: one state per
distinct GPU it could take) and computes Delta = F(after) - F(before) with `frag`. Results are cached
per request shape and node version, so a node is re-evaluated only after it changed: in a trace replay
most nodes are untouched between two requests of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .choosers import whole_gpus
from .filters import fitting_gpus
from .frag import NodeFrag, TargetWorkload, frag
from .inventory import MILLI_PER_GPU
from .request import Request
from .state import ClusterState, FloatArray, IndexArray, IntArray


@dataclass
class _ShapeCache:
    version: IntArray
    delta: FloatArray
    gpu: IntArray  # the GPU a share would take on each node


class DeltaTerm(Protocol):
    """A cost in milli-GPU that a bind on each node adds to Delta (see `stranding.py`)."""

    def delta(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray: ...


@dataclass
class FgdScorer:
    """Scores -Delta (exact), or the paper's floor(100 * sigmoid(-Delta / 1000)) when `quantized`.

    `terms` add costs the fragmentation measure does not see to Delta before it is scored; the GPU a
    share takes on the chosen node still follows Delta alone. The scorer is also the GPU chooser of
    the `fgd` policy: a share goes to the GPU with the least Delta, the first index on ties; whole GPUs
    are the first fully free ones.
    """

    workload: TargetWorkload
    quantized: bool = False
    terms: tuple[DeltaTerm, ...] = ()
    name: str = "fgd"
    _shapes: dict[tuple[object, ...], _ShapeCache] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._node_frag = NodeFrag(self.workload)

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        delta = self.deltas(state, req, nodes)
        for term in self.terms:
            delta = delta + term.delta(state, req, nodes)
        if self.quantized:
            return np.floor(100.0 / (1.0 + np.exp(delta / MILLI_PER_GPU)))
        return -delta

    def choose(
        self, state: ClusterState, req: Request, node: int, rng: np.random.Generator
    ) -> tuple[int, ...]:
        if req.is_share:
            self.deltas(state, req, np.array([node]))
            return (int(self._shapes[req.shape].gpu[node]),)
        return whole_gpus(state, req, node)

    def deltas(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        cache = self._shapes.get(req.shape)
        if cache is None or cache.version.shape != state.version.shape:
            n = state.node_count
            cache = _ShapeCache(np.full(n, -1, dtype=np.int64), np.zeros(n), np.zeros(n, dtype=np.int64))
            self._shapes[req.shape] = cache
        stale = nodes[cache.version[nodes] != state.version[nodes]]
        if stale.size:
            before = self._node_frag(state)[stale]
            if req.is_share:
                delta, gpu = self._share_deltas(state, req, stale)
                cache.gpu[stale] = gpu
            else:
                delta = self._whole_after(state, req, stale)
            cache.delta[stale] = delta - before
            cache.version[stale] = state.version[stale]
        return cache.delta[nodes]

    def _whole_after(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        """F after taking the first `num_gpu` fully free GPUs (and the CPU) of each node."""
        gpu = state.gpu_free[nodes]
        if req.num_gpu:
            full = gpu == MILLI_PER_GPU
            taken = full & (np.cumsum(full, axis=1) <= req.num_gpu)
            gpu = np.where(taken, 0, gpu)
        cpu = state.cpu_free[nodes] - req.cpu_milli
        return frag(self.workload, state.type_names, cpu, gpu, state.node_type[nodes])

    def _share_deltas(
        self, state: ClusterState, req: Request, nodes: IndexArray
    ) -> tuple[FloatArray, IntArray]:
        """Per node: the least F after the share, over the distinct GPUs it fits, and that GPU."""
        gpu = state.gpu_free[nodes]
        fits = fitting_gpus(state, req, nodes)
        width = gpu.shape[1]
        same = (gpu[:, :, None] == gpu[:, None, :]) & fits[:, None, :]
        earlier = np.tril(np.ones((width, width), dtype=bool), k=-1)
        candidates = fits & ~(same & earlier).any(axis=2)
        rows, cols = np.nonzero(candidates)
        after = gpu[rows].copy()
        after[np.arange(rows.size), cols] -= req.gpu_milli
        cpu = state.cpu_free[nodes][rows] - req.cpu_milli
        value = frag(self.workload, state.type_names, cpu, after, state.node_type[nodes][rows])
        best = np.full(nodes.size, np.inf)
        np.minimum.at(best, rows, value)
        # the first candidate column reaching the minimum: candidates come out of nonzero row-major
        is_best = value == best[rows]
        first = np.full(nodes.size, width, dtype=np.int64)
        np.minimum.at(first, rows[is_best], cols[is_best])
        return best, first
