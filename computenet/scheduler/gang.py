"""Gangs: every replica of every role of one RoleGroup is placed together, or none is.

A prefill/decode group is useless until all its members run (decode waits on prefill's KV transfer, a
prefill without a decode answers nobody), and a half-placed group holds GPUs that a whole group
elsewhere could have used. So `place_gang` places members one by one with the ordinary scheduler and,
if one fails, takes back every bind it made: the cluster state, and the scheduler's RNG, are exactly as
before the call.

Members go largest GPU demand first. The scheduler decides greedily, one request at a time; placed in
arrival order, a gang's 1-GPU members may take the only node with four free GPUs that its 4-GPU member
needed. Big first leaves the small members the leftovers, which they can usually still use.

`Trial` is the undo log both this module and the defragmenter (defrag.py) simulate with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .framework import Decision, Scheduler
from .request import Placement, Request
from .state import ClusterState


class Trial:
    """Binds and unbinds on a cluster state that `undo` takes back exactly, RNG included.

    What `undo` restores: every free/allocated array, `placements` (with its order, so that whoever
    iterates it sees what it saw before), `node_pods`, the per-deployment replica counters (a counter the
    trial created is dropped again) and, when given, the RNG's state — a trial that is undone leaves no
    trace in later seeded decisions. Node `version`s are *not* restored: they only ever grow, which is
    what tells the scorers' per-version caches that a node changed (twice, here) and must be recomputed.
    """

    def __init__(self, state: ClusterState, rng: np.random.Generator | None = None) -> None:
        self.state = state
        self._rng = rng
        self._rng_state: Mapping[str, Any] | None = None if rng is None else rng.bit_generator.state
        self._deployments = set(state.replicas)
        self._order: list[str] | None = None
        self._log: list[tuple[bool, Placement]] = []  # (was a bind, placement)

    def bind(self, placement: Placement) -> None:
        self.state.bind(placement)
        self._log.append((True, placement))

    def unbind(self, name: str) -> Placement:
        if self._order is None:
            self._order = list(self.state.placements)  # a re-bind would append; undo puts it back
        placement = self.state.unbind(name)
        self._log.append((False, placement))
        return placement

    def place(self, scheduler: Scheduler, req: Request) -> Decision:
        """`scheduler.place`, logged; the scheduler must work on this trial's state."""
        if scheduler.state is not self.state:
            raise ValueError("the scheduler works on another cluster state than this trial")
        decision = scheduler.decide(req)
        if decision.placement is not None:
            self.bind(decision.placement)
        return decision

    def undo(self) -> None:
        state = self.state
        while self._log:
            was_bind, placement = self._log.pop()
            if was_bind:
                state.unbind(placement.request.name)
            else:
                state.bind(placement)
        if self._order is not None:
            placements = dict(state.placements)
            state.placements.clear()
            state.placements.update((name, placements[name]) for name in self._order)
            self._order = None
        for deployment in [d for d in state.replicas if d not in self._deployments]:
            if not state.replicas[deployment].any():
                del state.replicas[deployment]
        if self._rng is not None and self._rng_state is not None:
            self._rng.bit_generator.state = self._rng_state


@dataclass(frozen=True)
class GangResult:
    """The gang's placements in the order the members were given, or None and why not."""

    placements: tuple[Placement, ...] | None
    reason: str

    @property
    def placed(self) -> bool:
        return self.placements is not None


def gang_order(requests: Sequence[Request]) -> list[Request]:
    """Largest GPU demand first, then most CPU, then most memory; equal members keep their order."""
    return sorted(requests, key=lambda r: (-r.gpu_demand_milli, -r.cpu_milli, -r.memory_mib))


def check_gang(state: ClusterState, requests: Sequence[Request]) -> None:
    """Raise ValueError for a gang no attempt should start on: a name twice, or a member already bound."""
    names = [r.name for r in requests]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"gang members need unique names; {', '.join(twice)} appear more than once")
    bound = [n for n in names if n in state.placements]
    if bound:
        raise ValueError(f"gang members already bound: {', '.join(bound)}; unbind them first")


def place_gang(scheduler: Scheduler, requests: Sequence[Request]) -> GangResult:
    """Bind all `requests` with `scheduler`, or none of them (the state and RNG are then as before)."""
    check_gang(scheduler.state, requests)
    if not requests:
        return GangResult((), "empty gang: nothing to place")
    trial = Trial(scheduler.state, scheduler.rng)
    placed: dict[str, Placement] = {}
    for req in gang_order(requests):
        decision = trial.place(scheduler, req)
        if decision.placement is None:
            trial.undo()
            return GangResult(
                None,
                f"gang member {req.name} does not fit ({decision.reason()}); "
                f"none of the gang's {len(requests)} members were placed",
            )
        placed[req.name] = decision.placement
    return GangResult(tuple(placed[r.name] for r in requests), f"placed all {len(requests)} gang members")
