"""Two costs FGD's fragmentation measure does not see; the `utilization` preset adds them to its Delta.

FGD asks of each node, on its own, whether *one* task of each class could start there. That misses:

* **CPU stranding.** A G2 node with 8 idle GPUs and 20 free cores can start one 11-core 1-GPU task,
  not eight, yet F_n counts all eight GPUs as usable. The other seven are stranded until CPU frees up.
  `CpuStranding` counts the idle GPU a node's free CPU cannot feed at the target workload's CPU per GPU,
  and charges a bind for what it strands. Replaying the default trace with 10x CPU on every node, every
  packing policy leaves ~4.1 % of GPUs unallocated; with the real CPU FGD leaves ~4.8 %: CPU stranding
  is most of what FGD loses, and the reason our preset gets to ~4.2 %.
* **Model pressure.** A request that runs on any GPU model scores the same on a P100 as on a G2, so it
  takes the P100s that pods pinned to P100 (`gpu_spec`) will need; FGD even prefers them, since a GPU
  few classes may use already counts as fragmented. `ModelPressure` charges such a request, per milli
  it takes, the share of that model's capacity that pinned requests of the target workload are
  expected to claim. On the `gpuspec33` trace this halves the unallocated GPUs (12 % to ~6 %).

Both are in milli-GPU, like Delta, so they add to it before FGD's quantisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .frag import TargetWorkload
from .request import Request
from .state import ClusterState, FloatArray, IndexArray, IntArray


def cpu_per_gpu_milli(workload: TargetWorkload) -> float:
    """CPU milli the target workload's GPU tasks ask per milli-GPU, weighted by popularity."""
    gpu_classes = [c for c in workload.classes if c.num_gpu]
    gpu = sum(c.weight * c.num_gpu * c.gpu_milli for c in gpu_classes)
    cpu = sum(c.weight * c.cpu_milli for c in gpu_classes)
    return cpu / gpu if gpu else 0.0


def stranded_milli(cpu_free: IntArray, idle_milli: IntArray, cpu_per_milli: float) -> FloatArray:
    """Idle milli-GPU beyond what `cpu_free` can feed at `cpu_per_milli`."""
    feedable = np.maximum(cpu_free, 0) / cpu_per_milli
    return np.maximum(idle_milli - feedable, 0.0)


@dataclass
class CpuStranding:
    """Delta term: the idle GPU a bind leaves without the CPU to use it (milli-GPU, can be negative)."""

    workload: TargetWorkload
    weight: float = 1.0

    def __post_init__(self) -> None:
        self.cpu_per_milli = cpu_per_gpu_milli(self.workload)

    def delta(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        if self.cpu_per_milli <= 0:
            return np.zeros(nodes.size)
        cpu = state.cpu_free[nodes]
        idle = state.gpu_free[nodes].sum(axis=1)
        before = stranded_milli(cpu, idle, self.cpu_per_milli)
        after = stranded_milli(cpu - req.cpu_milli, idle - req.gpu_demand_milli, self.cpu_per_milli)
        return self.weight * (after - before)


def pinned_density(workload: TargetWorkload, type_names: list[str], capacity: FloatArray) -> FloatArray:
    """Per GPU model: the share of its capacity that requests pinned to some models are expected to claim.

    A class is pinned when it excludes some model of the cluster; its expected GPU demand is split
    evenly over the models it allows. Expected demand is scaled to the whole cluster's capacity, which
    is where the FGD protocol measures (arrived demand = 100 %).
    """
    gpu_classes = [c for c in workload.classes if c.num_gpu]
    total = sum(c.weight * c.num_gpu * c.gpu_milli for c in gpu_classes)
    pinned = np.zeros(len(type_names))
    for c in gpu_classes:
        allowed = [i for i, name in enumerate(type_names) if name in c.gpu_types]
        if c.gpu_types and 0 < len(allowed) < len(type_names):
            pinned[allowed] += c.weight * c.num_gpu * c.gpu_milli / len(allowed)
    if not total:
        return pinned
    return pinned / total * capacity.sum() / np.maximum(capacity, 1.0)


@dataclass
class ModelPressure:
    """Delta term for a request that runs on any model: milli taken x the model's pinned density."""

    workload: TargetWorkload
    weight: float = 1.0
    _density: dict[tuple[tuple[str, ...], bytes], FloatArray] = field(default_factory=dict)

    def density(self, state: ClusterState) -> FloatArray:
        per_node = state.gpu_exists.sum(axis=1).astype(np.float64)
        capacity = np.bincount(state.node_type, weights=per_node, minlength=len(state.type_names))
        key = (tuple(state.type_names), capacity.tobytes())  # one policy may serve several clusters
        if key not in self._density:
            self._density[key] = pinned_density(self.workload, state.type_names, capacity.astype(np.float64))
        return self._density[key]

    def delta(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        if req.gpu_types or not req.num_gpu:
            return np.zeros(nodes.size)
        return self.weight * req.gpu_demand_milli * self.density(state)[state.node_type[nodes]]
