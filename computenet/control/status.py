"""Deployment status, derived from observed replica facts. Pure.

`Available` says whether the model can serve traffic now (at least one ready replica);
`Ready` says whether everything declared is up, and if not, why, in words a user can
act on. A condition keeps its lastTransitionTime while its status does not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from computenet.api import Deployment, DeploymentStatus, RoleStatus, transition
from computenet.pools import ReplicaPhase, ReplicaState

CRASH_LOOP_RESTARTS = 3


def deployment_status(
    deployment: Deployment,
    observed: Sequence[ReplicaState],
    *,
    blocked: tuple[str, str] | None = None,
    now: datetime | None = None,
) -> DeploymentStatus:
    """`blocked` is (reason, message) when the reconciler cannot start replicas at all."""
    now = now or datetime.now(UTC)
    roles = [
        RoleStatus(
            name=role.name,
            replicas=sum(1 for s in observed if s.spec.role == role.name),
            ready_replicas=sum(
                1 for s in observed if s.spec.role == role.name and s.phase == ReplicaPhase.READY
            ),
        )
        for role in deployment.spec.roles
    ]
    ready = sum(r.ready_replicas for r in roles)
    desired = deployment.desired_replicas
    previous = deployment.status.conditions if deployment.status else []
    conditions = [
        transition("Available", ready > 0, *_available_reason(ready, desired), previous, now),
        transition(
            "Ready",
            blocked is None and ready == desired,
            *_ready_reason(ready, desired, observed, blocked),
            previous,
            now,
        ),
    ]
    return DeploymentStatus(
        observed_generation=deployment.metadata.generation or 0,
        replicas=sum(r.replicas for r in roles),
        ready_replicas=ready,
        roles=roles,
        conditions=conditions,
    )


def _available_reason(ready: int, desired: int) -> tuple[str, str]:
    if ready:
        return "ReplicasAvailable", f"{ready} replica(s) ready to serve"
    if desired == 0:
        return "ScaledToZero", "no replicas requested"
    return "NoReplicaReady", "no replica is ready yet"


def _ready_reason(
    ready: int, desired: int, observed: Sequence[ReplicaState], blocked: tuple[str, str] | None
) -> tuple[str, str]:
    if blocked is not None:
        return blocked
    crashing = [s for s in observed if s.restarts >= CRASH_LOOP_RESTARTS and s.phase != ReplicaPhase.READY]
    if crashing:
        worst = max(crashing, key=lambda s: s.restarts)
        return "CrashLoopBackOff", (
            f"replica {worst.name} restarted {worst.restarts} times (last exit code {worst.last_exit_code}); "
            f"see `computenet logs {worst.name}`"
        )
    if ready == desired:
        return "AllReplicasReady", f"{ready}/{desired} replicas ready"
    return "ReplicasStarting", f"{ready}/{desired} replicas ready"
