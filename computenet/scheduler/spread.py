"""Spread constraints: replicas of one deployment across nodes, zones or regions (max skew).

As Kubernetes' PodTopologySpread with `whenUnsatisfiable: DoNotSchedule`: a replica may go to a domain
only if afterwards that domain holds at most `max_skew` more replicas than the emptiest eligible domain.
A domain is eligible when it has a healthy node in the request's pools and GPU models with at least as many
GPUs as the request takes: like Kubernetes' default `nodeAffinityPolicy: Honor`, domains the request may
never use (a GPU-less Ray head, say) do not hold the minimum down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .filters import GpuTypeFilter, PoolFilter
from .request import Request, SpreadKey
from .state import BoolArray, ClusterState, FloatArray, IndexArray, IntArray


def domains(state: ClusterState, key: SpreadKey) -> IntArray:
    """The domain id of every node for a spread key."""
    if key == "node":
        return np.arange(state.node_count, dtype=np.int64)
    return state.node_zone if key == "zone" else state.node_region


def domain_counts(state: ClusterState, req: Request, key: SpreadKey) -> tuple[IntArray, IntArray]:
    """(domain id per node, replicas of req's deployment per domain)."""
    ids = domains(state, key)
    replicas = state.replicas.get(req.deployment)
    if replicas is None:
        return ids, np.zeros(int(ids.max(initial=0)) + 1, dtype=np.int64)
    return ids, np.bincount(ids, weights=replicas, minlength=int(ids.max(initial=0)) + 1).astype(np.int64)


@dataclass(frozen=True)
class SpreadFilter:
    name: str = "spread"

    def feasible(self, state: ClusterState, req: Request) -> BoolArray:
        if req.spread is None or not req.deployment:
            return np.ones(state.node_count, dtype=bool)
        ids, counts = domain_counts(state, req, req.spread.key)
        selected = PoolFilter().feasible(state, req) & GpuTypeFilter().feasible(state, req)
        selected &= state.gpu_count >= req.num_gpu
        live = np.unique(ids[state.node_healthy & selected])
        floor = counts[live].min() if live.size else 0
        return counts[ids] + 1 - floor <= req.spread.max_skew


@dataclass(frozen=True)
class SpreadScorer:
    """Fewer replicas of the same deployment in a node's domain scores higher (zone, then node)."""

    name: str = "spread"

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        if not req.deployment:
            return np.zeros(nodes.size)
        key = req.spread.key if req.spread is not None else "zone"
        total = np.zeros(nodes.size)
        for level, weight in ((key, 2.0), ("node", 1.0)):
            ids, counts = domain_counts(state, req, level)
            mine = counts[ids[nodes]]
            total += weight * (1 - mine / (mine.max() + 1))
        return 100 * total / 3
