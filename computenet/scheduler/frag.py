"""GPU fragmentation against a target workload (FGD, Weng et al., USENIX ATC'23, section 4).

A node's idle GPU is *fragmented* for a task class when that class cannot use it: the model is not
allowed, too few GPUs have room, the CPU is gone, or a GPU's leftover is smaller than the class's share.
Weighting classes by how common they are gives F_n(M), the GPU a node wastes for the workload M that is
expected to arrive. `frag` evaluates F for many node states at once; FGD and the defragmenter call it on
hypothetical states.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .request import Request
from .state import ClusterState, FloatArray, IntArray


@dataclass(frozen=True)
class TaskClass:
    cpu_milli: int
    gpu_milli: int
    num_gpu: int
    gpu_types: frozenset[str]
    weight: float


@dataclass(frozen=True)
class _GpuGroup:
    """Task classes that share one per-GPU request, so their per-GPU tests are computed once."""

    gpu_milli: int
    num_gpu: IntArray
    cpu_milli: IntArray
    allowed: NDArray[np.bool_]  # (classes, GPU models)
    weight: FloatArray
    total_weight: float


class TargetWorkload:
    """The task classes M with their popularity p_m (weights sum to 1)."""

    def __init__(self, classes: Sequence[TaskClass]) -> None:
        self.classes = tuple(classes)
        self._compiled: dict[tuple[str, ...], tuple[float, tuple[_GpuGroup, ...]]] = {}

    @classmethod
    def typical(cls, requests: Iterable[Request], coverage: float = 0.95) -> TargetWorkload:
        """The most frequent request shapes that together cover `coverage` of requests (FGD's default).

        A shape is (CPU, per-GPU milli, GPU count, allowed models); memory is not part of it. The order of
        equally frequent shapes is fixed by the shape itself, so the result does not depend on input order.
        """
        counts = Counter(
            (r.cpu_milli, r.gpu_milli, r.num_gpu, "|".join(sorted(r.gpu_types))) for r in requests
        )
        total = sum(counts.values())
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept: list[tuple[tuple[int, int, int, str], int]] = []
        covered = 0
        for shape, count in ranked:
            if total and covered >= coverage * total:
                break
            kept.append((shape, count))
            covered += count
        return cls(
            [
                TaskClass(cpu, milli, num, frozenset(filter(None, types.split("|"))), count / covered)
                for (cpu, milli, num, types), count in kept
            ]
        )

    def groups(self, type_names: Sequence[str]) -> tuple[float, tuple[_GpuGroup, ...]]:
        """(weight of CPU-only classes, GPU classes grouped by per-GPU milli) for one cluster's models."""
        key = tuple(type_names)
        if key not in self._compiled:
            cpu_only = sum(c.weight for c in self.classes if c.num_gpu == 0)
            groups = []
            for milli in sorted({c.gpu_milli for c in self.classes if c.num_gpu}):
                members = [c for c in self.classes if c.num_gpu and c.gpu_milli == milli]
                allowed = np.array(
                    [[not c.gpu_types or name in c.gpu_types for name in type_names] for c in members],
                    dtype=bool,
                )
                weight = np.array([c.weight for c in members])
                groups.append(
                    _GpuGroup(
                        gpu_milli=milli,
                        num_gpu=np.array([c.num_gpu for c in members], dtype=np.int64),
                        cpu_milli=np.array([c.cpu_milli for c in members], dtype=np.int64),
                        allowed=allowed,
                        weight=weight,
                        total_weight=float(weight.sum()),
                    )
                )
            self._compiled[key] = (cpu_only, tuple(groups))
        return self._compiled[key]


def frag(
    workload: TargetWorkload,
    type_names: Sequence[str],
    cpu_free: IntArray,
    gpu_free: IntArray,
    node_type: IntArray,
) -> FloatArray:
    """F_n(M) in milli-GPU for each row: a node state given as free CPU, free milli per GPU, model id."""
    cpu_only, groups = workload.groups(type_names)
    idle = gpu_free.sum(axis=1).astype(np.float64)
    total = cpu_only * idle
    for group in groups:
        fits = gpu_free >= group.gpu_milli
        count = fits.sum(axis=1)
        leftover = idle - np.where(fits, gpu_free, 0).sum(axis=1)
        usable = (
            group.allowed[:, node_type]
            & (count[None, :] >= group.num_gpu[:, None])
            & (cpu_free[None, :] >= group.cpu_milli[:, None])
        )
        satisfied = group.weight @ usable
        total += satisfied * leftover + (group.total_weight - satisfied) * idle
    return total


class NodeFrag:
    """F_n(M) of every node as the cluster stands, recomputed only for nodes whose version moved."""

    def __init__(self, workload: TargetWorkload) -> None:
        self.workload = workload
        self._version = np.zeros(0, dtype=np.int64)
        self._frag = np.zeros(0)

    def __call__(self, state: ClusterState) -> FloatArray:
        if self._version.shape != state.version.shape:
            self._version = np.full(state.node_count, -1, dtype=np.int64)
            self._frag = np.zeros(state.node_count)
        stale = np.flatnonzero(self._version != state.version)
        if stale.size:
            self._frag[stale] = frag(
                self.workload,
                state.type_names,
                state.cpu_free[stale],
                state.gpu_free[stale],
                state.node_type[stale],
            )
            self._version[stale] = state.version[stale]
        return self._frag
