"""A Ray replica's phase from the facts the driver gathered (actor, node table, health probes). Pure."""

from __future__ import annotations

from dataclasses import replace

from computenet.pools import ReplicaPhase, ReplicaSpec
from computenet.pools.ray.status import Observed, Readiness, replica_state
from computenet.pools.ray.wire import ActorFacts

NODE, OTHER = "n" * 56, "o" * 56
SPEC = ReplicaSpec(
    name="web-server-0", deployment="web", role="server", engine="sim", served_name="llm", source="sim://llm",
    gpus=2, node=NODE, gpu_ids=(0, 1),
)  # fmt: skip
RUNNING = ActorFacts(
    name=SPEC.name, pool="ray", spec=SPEC, node_id=NODE, gpu_ids=(2, 3), running=True,
    url="http://10.0.0.7:8000", pid=42, started_at=1.0,
)  # fmt: skip
ALIVE = frozenset({NODE, OTHER})


def phase(seen: Observed, alive: frozenset[str] = ALIVE) -> tuple[ReplicaPhase, str]:
    state = replica_state("ray", seen, alive)
    return state.phase, state.message


def test_an_actor_not_placed_yet_is_starting_and_lost_if_its_node_died_meanwhile() -> None:
    assert phase(Observed(SPEC)) == (
        ReplicaPhase.STARTING,
        "waiting for Ray to place and start the replica actor",
    )
    assert phase(Observed(SPEC), frozenset({OTHER}))[0] == ReplicaPhase.LOST


def test_a_running_engine_is_ready_once_its_probe_passes() -> None:
    waiting = replica_state("ray", Observed(SPEC, RUNNING), ALIVE)
    assert (waiting.phase, waiting.url) == (ReplicaPhase.STARTING, RUNNING.url)
    ready = replica_state("ray", Observed(SPEC, RUNNING, readiness=Readiness(ready=True)), ALIVE)
    assert (ready.phase, ready.url, ready.pid, ready.node) == (ReplicaPhase.READY, RUNNING.url, 42, NODE)


def test_the_reported_spec_carries_the_gpus_ray_gave_not_the_ones_asked_for() -> None:
    state = replica_state("ray", Observed(SPEC, RUNNING), ALIVE)
    assert state.spec.gpu_ids == (2, 3) and state.spec.template_hash == SPEC.template_hash


def test_an_engine_not_started_yet_is_starting_and_one_that_exited_is_backing_off() -> None:
    fresh = replace(RUNNING, running=False, url=None, pid=None)
    assert phase(Observed(SPEC, fresh)) == (ReplicaPhase.STARTING, "starting the engine")
    exited = replace(fresh, restarts=1, last_exit_code=1, message="exited with code 1")
    assert phase(Observed(SPEC, exited)) == (ReplicaPhase.BACKOFF, "exited with code 1")


def test_a_vanished_actor_or_a_dead_node_makes_the_replica_lost() -> None:
    assert phase(Observed(SPEC, RUNNING, gone=True, gone_reason="its Ray actor died")) == (
        ReplicaPhase.LOST,
        "its Ray actor died",
    )
    assert phase(Observed(SPEC, RUNNING, readiness=Readiness(ready=True)), frozenset({OTHER})) == (
        ReplicaPhase.LOST,
        f"its Ray node {NODE} is dead",
    )


def test_readiness_needs_one_pass_and_is_lost_after_three_failures_in_a_row() -> None:
    readiness = Readiness().observe(False)
    assert not readiness.ready
    readiness = readiness.observe(True).observe(False).observe(False)
    assert readiness.ready
    failing = readiness.observe(False)
    assert not failing.ready
    assert phase(Observed(SPEC, RUNNING, readiness=failing)) == (
        ReplicaPhase.STARTING,
        "health probe failing",
    )
