"""Tentative binds on the live cluster state, taken back exactly.

Gangs, preemption and defragmentation all ask "what would the policy do if these pods were gone (or
bound)?" They answer it on the real state — so the policy's own filters and chooser decide — inside a
`Trial`, and undo it.
"""

from __future__ import annotations

from collections.abc import Mapping
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
