"""The one plugin interface, and the scheduler that runs a policy built from plugins.

A decision follows kube-scheduler's cycle: every filter narrows the nodes, every scorer rates what is
left (higher is better), the weighted sum picks a node with ties broken by the seeded RNG, and a GPU
chooser picks the device indices on that node. Plugins see all nodes at once as arrays (`ClusterState`),
so one Python call covers the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from .request import Placement, Request
from .state import BoolArray, ClusterState, FloatArray, IndexArray


class Filter(Protocol):
    @property
    def name(self) -> str: ...

    def feasible(self, state: ClusterState, req: Request) -> BoolArray:
        """One bool per node: can `req` run there at all."""
        ...


class Scorer(Protocol):
    @property
    def name(self) -> str: ...

    def score(self, state: ClusterState, req: Request, nodes: IndexArray) -> FloatArray:
        """One score per node in `nodes` (all feasible); higher is better."""
        ...


class GpuChooser(Protocol):
    def choose(
        self, state: ClusterState, req: Request, node: int, rng: np.random.Generator
    ) -> tuple[int, ...]:
        """The GPU indices on `node` (which passed every filter) that `req` gets."""
        ...


TieBreak = Literal["random", "first"]


@dataclass
class Policy:
    name: str
    filters: tuple[Filter, ...]
    scorers: tuple[tuple[Scorer, float], ...]
    chooser: GpuChooser
    tie_break: TieBreak = "random"


@dataclass
class Decision:
    """A placement (or None), and why: how many nodes each filter left."""

    placement: Placement | None
    feasible_nodes: int
    rejected_by: dict[str, int] = field(default_factory=dict)

    def reason(self) -> str:
        if self.placement is not None:
            return "placed"
        worst = [f"{count} by {name}" for name, count in self.rejected_by.items() if count]
        return "no node fits: nodes rejected " + (", ".join(worst) or "none (empty cluster)")


class Scheduler:
    """Runs one policy on one cluster state. Deterministic for a given seed."""

    def __init__(self, state: ClusterState, policy: Policy, *, seed: int = 0) -> None:
        self.state = state
        self.policy = policy
        self.rng = np.random.default_rng(seed)

    def feasible(self, req: Request) -> tuple[IndexArray, dict[str, int]]:
        mask = np.ones(self.state.node_count, dtype=bool)
        rejected: dict[str, int] = {}
        for flt in self.policy.filters:
            before = int(mask.sum())
            mask &= flt.feasible(self.state, req)
            rejected[flt.name] = before - int(mask.sum())
        return np.flatnonzero(mask), rejected

    def decide(self, req: Request) -> Decision:
        nodes, rejected = self.feasible(req)
        if nodes.size == 0:
            return Decision(None, 0, rejected)
        node = self._pick(req, nodes)
        gpus = self.policy.chooser.choose(self.state, req, node, self.rng)
        return Decision(Placement(req, node, gpus), int(nodes.size), rejected)

    def place(self, req: Request) -> Decision:
        """Decide and bind."""
        decision = self.decide(req)
        if decision.placement is not None:
            self.state.bind(decision.placement)
        return decision

    def _pick(self, req: Request, nodes: IndexArray) -> int:
        if nodes.size == 1:
            return int(nodes[0])
        total = np.zeros(nodes.size)
        for scorer, weight in self.policy.scorers:
            total += weight * scorer.score(self.state, req, nodes)
        best = np.flatnonzero(total == total.max())
        if best.size == 1 or self.policy.tie_break == "first":
            return int(nodes[best[0]])
        return int(nodes[best[self.rng.integers(best.size)]])
