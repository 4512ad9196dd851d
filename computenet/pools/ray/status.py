"""A Ray replica's phase, derived from facts the driver gathered. Pure.

Facts come from three places: the replica actor (is its engine process running, where, since when),
Ray's node table (is the actor's node alive) and the driver's own HTTP probes of the engine's health
path. The phase is a function of them, so every case is a unit test:

* `Lost`: the actor is gone without being stopped (its node died, or its worker process did), or
  the node it runs on (or was pinned to) is dead. The reconciler places such a replica anew.
* `Starting`: Ray has not placed or constructed the actor yet, the actor has not started its engine
  yet, or the engine runs but its health
  probe has not passed (or failed `FAILED_PROBES_TO_UNREADY` times in a row after passing).
* `BackOff`: the engine exited; the actor restarts it after its backoff.
* `Ready`: the engine runs and its health probe passes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..base import ReplicaPhase, ReplicaSpec, ReplicaState
from ..local import FAILED_PROBES_TO_UNREADY
from .wire import ActorFacts


@dataclass(frozen=True)
class Readiness:
    """The health probe's verdict over time: ready after one pass, unready after a run of failures."""

    ready: bool = False
    failures: int = 0

    def observe(self, healthy: bool) -> Readiness:
        if healthy:
            return Readiness(ready=True)
        failures = self.failures + 1
        return Readiness(ready=self.ready and failures < FAILED_PROBES_TO_UNREADY, failures=failures)


@dataclass(frozen=True)
class Observed:
    """Everything the driver knows about one replica at one moment."""

    spec: ReplicaSpec  # as started (or as adopted from the actor)
    facts: ActorFacts | None = None  # None: the actor has not answered yet
    listed: bool = False  # the cluster has listed its actor at least once (so its absence means gone)
    gone: bool = False  # the actor vanished (or died) without `stop()`
    gone_reason: str = ""
    readiness: Readiness = Readiness()


def replica_state(pool: str, seen: Observed, alive_nodes: frozenset[str]) -> ReplicaState:
    """The `ReplicaState` a driver reports for `seen`, given the ids of the cluster's live nodes."""
    facts = seen.facts
    node = facts.node_id if facts is not None else seen.spec.node
    spec = seen.spec if facts is None else replace(seen.spec, node=facts.node_id, gpu_ids=facts.gpu_ids)
    base = ReplicaState(spec=spec, pool=pool, phase=ReplicaPhase.STARTING, node=node)
    if facts is not None:
        base = replace(
            base,
            pid=facts.pid,
            restarts=facts.restarts,
            last_exit_code=facts.last_exit_code,
            started_at=facts.started_at,
            message=facts.message,
        )
    if node and node not in alive_nodes:
        return replace(base, phase=ReplicaPhase.LOST, message=f"its Ray node {node} is dead")
    if seen.gone:
        return replace(base, phase=ReplicaPhase.LOST, message=seen.gone_reason)
    if facts is None:
        return replace(base, message="waiting for Ray to place and start the replica actor")
    if not facts.running and facts.last_exit_code is None:
        return replace(base, message="starting the engine")
    if not facts.running:
        return replace(base, phase=ReplicaPhase.BACKOFF)
    serving = replace(base, url=facts.url, kv_events=facts.kv_events, kv_events_replay=facts.kv_events_replay)
    if seen.readiness.ready:
        return replace(serving, phase=ReplicaPhase.READY, message="")
    failing = seen.readiness.failures >= FAILED_PROBES_TO_UNREADY
    return replace(serving, message="health probe failing" if failing else "waiting for the health probe")
