"""What to change: desired replica specs against observed replicas. Pure.

The reconciler applies a `Plan`; keeping the decision separate lets tests cover every
case (scale up, scale down, changed template, lost node, foreign replicas) without processes.
Replicas to start carry no placement yet: `placement.py` decides where they go.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from computenet.pools import ReplicaPhase, ReplicaSpec, ReplicaState


@dataclass(frozen=True)
class Plan:
    stop: list[str] = field(default_factory=list)  # replica names, stopped first
    start: list[ReplicaSpec] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.stop and not self.start


def plan(desired: Iterable[ReplicaSpec], observed: Iterable[ReplicaState]) -> Plan:
    wanted = {spec.name: spec for spec in desired}
    running = {state.name: state for state in observed}
    stop = [
        name
        for name, state in running.items()
        if name not in wanted
        or state.spec.template_hash != wanted[name].template_hash
        or state.phase == ReplicaPhase.LOST  # its node is gone: start it again where the scheduler says
    ]
    start = [spec for name, spec in wanted.items() if name not in running or name in stop]
    return Plan(stop=sorted(stop), start=start)
