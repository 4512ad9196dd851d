"""The FGD paper's evaluation: replay a trace pod by pod and measure what stays unallocated.

After every pod (placed or failed) it records the arrived GPU demand, the allocated GPU and the
fragmentation against the target workload. `curve` then bins the events by arrived demand as a whole
percentage of capacity, as the artifact's `merge_*_discrete.py` scripts do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .frag import NodeFrag, TargetWorkload
from .framework import Scheduler
from .inventory import Inventory
from .policies import make_policy
from .request import Placement, Request
from .state import ClusterState, FloatArray
from .trace import protocol_nodes, protocol_workload

CURVE_MAX_PERCENT = 130


@dataclass
class ReplayResult:
    policy: str
    seed: int
    capacity_milli: int
    state_names: list[str]
    pods: list[Request]
    placements: list[Placement | None]
    arrived_milli: FloatArray
    allocated_milli: FloatArray
    frag_milli: FloatArray
    idle_milli: FloatArray
    decision_s: FloatArray

    def curve(self, metric: str) -> dict[int, float]:
        """The metric per whole percent of arrived demand (0..130), averaged over the events in that bin.

        Metrics: `unallocated` (% of GPU capacity), `frag_rate` (% of idle GPU that is fragmented),
        `frag_amount` (% of GPU capacity). A bin with no event takes the events within +-1 percent.
        """
        values = {
            "unallocated": 100 * (1 - self.allocated_milli / self.capacity_milli),
            "frag_rate": 100 * self.frag_milli / np.maximum(self.idle_milli, 1),
            "frag_amount": 100 * self.frag_milli / self.capacity_milli,
        }[metric]
        x = np.floor(100 * self.arrived_milli / self.capacity_milli + 0.5).astype(np.int64)
        out: dict[int, float] = {}
        for percent in range(CURVE_MAX_PERCENT + 1):
            hit = x == percent
            if not hit.any():
                hit = np.abs(x - percent) <= 1
            if hit.any():
                out[percent] = float(values[hit].mean())
        return out


def replay(
    inventory: Inventory,
    pods: Sequence[Request],
    policy: str,
    *,
    seed: int,
    inflate: float = 1.3,
    workload: TargetWorkload | None = None,
) -> ReplayResult:
    """One run of the protocol. The target workload defaults to the typical pods of `pods` (untuned)."""
    workload = workload or TargetWorkload.typical(pods)
    state = ClusterState(protocol_nodes(inventory, seed=seed))
    scheduler = Scheduler(state, make_policy(policy, workload), seed=seed)
    arrivals = protocol_workload(pods, state.gpu_capacity_milli, seed=seed, inflate=inflate)
    frag = NodeFrag(workload)
    n = len(arrivals)
    arrived, allocated, fragmented, idle, spent = (np.zeros(n) for _ in range(5))
    placements: list[Placement | None] = []
    demand = 0
    for i, pod in enumerate(arrivals):
        start = time.perf_counter()
        decision = scheduler.place(pod)
        spent[i] = time.perf_counter() - start
        placements.append(decision.placement)
        demand += pod.gpu_demand_milli
        arrived[i] = demand
        allocated[i] = state.gpu_allocated_milli
        fragmented[i] = frag(state).sum()
        idle[i] = state.gpu_free.sum()
    return ReplayResult(
        policy,
        seed,
        state.gpu_capacity_milli,
        state.names,
        arrivals,
        placements,
        arrived,
        allocated,
        fragmented,
        idle,
        spent,
    )
