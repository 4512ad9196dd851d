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

from collections.abc import Sequence
from dataclasses import dataclass

from .framework import Scheduler
from .request import Placement, Request
from .state import ClusterState
from .trial import Trial


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
