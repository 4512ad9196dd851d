"""What the cluster says about replicas, as `ReplicaState`s. Pure: objects in, facts out.

A replica is wanted when a workload object of this pool carries its spec (annotation); its state
comes from its pods: Ready when every pod of it is ready, BackOff while the engine crash-loops,
Lost when a pod's node is gone or not Ready (the pool cannot bring it back there; the reconciler
places it anew), Stopping while its workload is being deleted, Starting otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..base import ReplicaPhase, ReplicaSpec, ReplicaState
from .inventory import is_ready
from .names import GATE, MEMBER, PORT, REPLICA, SPEC_ANNOTATION, object_name, spec_from_json

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Wanted:
    """A replica some workload object asks for, and whether that object is being deleted."""

    spec: ReplicaSpec
    deleting: bool = False


def wanted_replicas(workloads: Iterable[Manifest]) -> list[Wanted]:
    """The replicas the pool's workload objects carry (a RoleBasedGroup carries one per role)."""
    wanted = []
    for obj in workloads:
        deleting = bool(obj["metadata"].get("deletionTimestamp"))
        carriers = [obj]
        if obj["kind"] == "RoleBasedGroup":
            carriers = [role.get("template") or {} for role in obj["spec"].get("roles") or []]
        for carrier in carriers:
            annotations = (carrier.get("metadata") or {}).get("annotations") or {}
            spec = spec_from_json(annotations.get(SPEC_ANNOTATION, ""))
            if spec is not None:
                wanted.append(Wanted(spec, deleting))
    return wanted


def replica_states(
    pool: str, wanted: Sequence[Wanted], pods: Iterable[Manifest], nodes: Iterable[Manifest]
) -> list[ReplicaState]:
    by_replica: dict[str, list[Manifest]] = defaultdict(list)
    for pod in pods:
        by_replica[pod["metadata"].get("labels", {}).get(REPLICA, "")].append(pod)
    ready_nodes = {n["metadata"]["name"] for n in nodes if is_ready(n)}
    return [_state(pool, w, by_replica.get(object_name(w.spec.name), []), ready_nodes) for w in wanted]


def _state(pool: str, wanted: Wanted, pods: list[Manifest], ready_nodes: set[str]) -> ReplicaState:
    spec = wanted.spec
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if wanted.deleting:
        return ReplicaState(spec, pool, ReplicaPhase.STOPPING, node=spec.node)
    if not live:
        return ReplicaState(spec, pool, ReplicaPhase.STARTING, node=spec.node, message="no pod yet")
    main = _serving_pod(live)
    engine = _engine_status(main)
    facts: dict[str, Any] = {
        "node": main["spec"].get("nodeName") or spec.node,
        "url": f"http://{ip}:{PORT}" if (ip := (main.get("status") or {}).get("podIP")) else None,
        "restarts": sum(_engine_status(p).get("restartCount", 0) for p in live),
        "last_exit_code": _last_exit_code(engine),
        "started_at": _started_at(engine),
    }
    phase, message = _phase(live, ready_nodes)
    return ReplicaState(spec, pool, phase, message=message, **facts)


def _phase(pods: Sequence[Manifest], ready_nodes: set[str]) -> tuple[ReplicaPhase, str]:
    lost = sorted({n for p in pods if (n := p["spec"].get("nodeName")) and n not in ready_nodes})
    if lost:
        return ReplicaPhase.LOST, f"node {', '.join(lost)} is gone or not Ready"
    waiting = [w for p in pods if (w := (_engine_status(p).get("state") or {}).get("waiting"))]
    if any(w.get("reason") == "CrashLoopBackOff" for w in waiting):
        return ReplicaPhase.BACKOFF, "engine is crash-looping (CrashLoopBackOff)"
    if any((p.get("status") or {}).get("phase") in ("Failed", "Succeeded") for p in pods):
        return ReplicaPhase.BACKOFF, "pod exited"
    if all(_condition(p, "Ready") == "True" for p in pods):
        return ReplicaPhase.READY, ""
    if any(g.get("name") == GATE for p in pods for g in p["spec"].get("schedulingGates") or []):
        return ReplicaPhase.STARTING, "waiting for the rest of its prefill/decode group (scheduling gate)"
    unschedulable = [p for p in pods if _condition(p, "PodScheduled", "reason") == "Unschedulable"]
    if unschedulable:
        return ReplicaPhase.STARTING, "unschedulable: " + _condition(
            unschedulable[0], "PodScheduled", "message"
        )
    return ReplicaPhase.STARTING, ""


def _serving_pod(pods: Sequence[Manifest]) -> Manifest:
    """The leader of a multi-node replica, else its newest pod."""
    leaders = [p for p in pods if p["metadata"].get("labels", {}).get(MEMBER) == "leader"]
    return max(leaders or pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))


def _engine_status(pod: Mapping[str, Any]) -> Manifest:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == "engine"), {})


def _condition(pod: Mapping[str, Any], type_: str, field: str = "status") -> str:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return str(next((c.get(field, "") for c in conditions if c.get("type") == type_), ""))


def _last_exit_code(engine: Mapping[str, Any]) -> int | None:
    terminated = (engine.get("lastState") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    return int(code) if code is not None else None


def _started_at(engine: Mapping[str, Any]) -> float | None:
    started = ((engine.get("state") or {}).get("running") or {}).get("startedAt")
    return datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp() if started else None
