"""The reconciler's pure decisions: which replicas should exist, what to change, what status says."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from computenet.api import Deployment, Model, load_text
from computenet.control.desired import desired_replicas
from computenet.control.plan import plan
from computenet.control.status import deployment_status
from computenet.pools import ReplicaPhase, ReplicaSpec, ReplicaState


def _pair(replicas: int = 2, args: str = "{}") -> tuple[Deployment, Model]:
    model, dep = load_text(f"""
kind: Model
metadata: {{name: llm}}
spec: {{source: hf://org/llm, runtimes: [{{engine: sim, args: {{tpot_ms: 9, ttft_ms: 1}}}}]}}
---
kind: Deployment
metadata: {{name: web, generation: 3}}
spec: {{model: llm, engine: sim, engineArgs: {args}, roles: [{{replicas: {replicas}}}]}}
""")
    assert isinstance(dep, Deployment) and isinstance(model, Model)
    return dep, model


def _running(spec: ReplicaSpec, phase: ReplicaPhase = ReplicaPhase.READY, restarts: int = 0) -> ReplicaState:
    return ReplicaState(
        spec=spec, pool="local", phase=phase, restarts=restarts, last_exit_code=1 if restarts else None
    )


def test_desired_replicas_are_named_by_role_and_ordinal_with_merged_args() -> None:
    dep, model = _pair(2, args="{tpot_ms: 3}")
    specs = desired_replicas(dep, model)
    assert [s.name for s in specs] == ["web-server-0", "web-server-1"]
    assert specs[0].args == {"tpot_ms": 3, "ttft_ms": 1}  # deployment args win over the model's
    assert specs[0].served_name == "llm" and specs[0].source == "hf://org/llm"


def test_template_hash_follows_what_runs_not_the_replica_count() -> None:
    base = desired_replicas(*_pair(1))[0].template_hash
    assert desired_replicas(*_pair(3))[0].template_hash == base
    assert desired_replicas(*_pair(1, args="{tpot_ms: 1}"))[0].template_hash != base


def test_plan_scales_up_and_down() -> None:
    two = desired_replicas(*_pair(2))
    assert [s.name for s in plan(two, []).start] == ["web-server-0", "web-server-1"]
    three = desired_replicas(*_pair(3))
    up = plan(three, [_running(s) for s in two])
    assert (up.stop, [s.name for s in up.start]) == ([], ["web-server-2"])
    down = plan(two[:1], [_running(s) for s in three])
    assert (down.stop, down.start) == (["web-server-1", "web-server-2"], [])
    assert plan(two, [_running(s) for s in two]).empty


def test_plan_replaces_replicas_whose_template_changed_and_stops_unknown_ones() -> None:
    old = desired_replicas(*_pair(1))
    new = desired_replicas(*_pair(1, args="{tpot_ms: 1}"))
    stray = replace(old[0], name="gone-server-0", deployment="gone")
    decision = plan(new, [_running(old[0]), _running(stray)])
    assert decision.stop == ["gone-server-0", "web-server-0"]
    assert [s.template_hash for s in decision.start] == [new[0].template_hash]


def test_status_counts_ready_replicas_and_conditions() -> None:
    dep, model = _pair(2)
    specs = desired_replicas(dep, model)
    status = deployment_status(dep, [_running(specs[0]), _running(specs[1], ReplicaPhase.STARTING)])
    assert (status.replicas, status.ready_replicas, status.observed_generation) == (2, 1, 3)
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions == {"Available": ("True", "ReplicasAvailable"), "Ready": ("False", "ReplicasStarting")}


def test_crash_looping_replica_is_named_with_the_command_to_see_why() -> None:
    dep, model = _pair(1)
    spec = desired_replicas(dep, model)[0]
    status = deployment_status(dep, [_running(spec, ReplicaPhase.BACKOFF, restarts=4)])
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert ready.reason == "CrashLoopBackOff"
    assert "computenet logs web-server-0" in ready.message and "exit code 1" in ready.message


def test_blocked_deployment_reports_the_reason_given() -> None:
    dep, _ = _pair(1)
    status = deployment_status(dep, [], blocked=("ModelNotFound", "Model 'llm' does not exist"))
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "ModelNotFound")


def test_transition_time_is_kept_while_a_condition_holds() -> None:
    dep, model = _pair(1)
    specs = desired_replicas(dep, model)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = deployment_status(dep, [_running(specs[0])], now=t0)
    dep = dep.model_copy(update={"status": first})
    later = deployment_status(dep, [_running(specs[0])], now=t0 + timedelta(minutes=5))
    assert all(c.last_transition_time == t0 for c in later.conditions)
    gone = deployment_status(dep, [], now=t0 + timedelta(minutes=9))
    assert all(c.last_transition_time == t0 + timedelta(minutes=9) for c in gone.conditions)
