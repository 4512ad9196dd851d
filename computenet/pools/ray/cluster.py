"""What the agent does on the Ray cluster it is connected to: list nodes, and start, stop, list and read
the logs of replica actors. Blocking Ray API calls; the agent runs each request in a thread.

Replica actors are named after their replica in the agent's namespace (`computenet` unless the pool
says otherwise), detached, and never restarted by Ray (`max_restarts=0`): an actor whose worker or node
died is gone, its name is free, and the driver reports the replica `Lost` so that the reconciler places
it again with the scheduler's knowledge of which nodes are left.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .replica_actor import ReplicaActor
from .wire import spec_from_wire

FACTS_TIMEOUT_S = 1.0  # an actor that has not answered by then is still being placed or constructed
STOP_TIMEOUT_S = 10.0  # the engine's SIGTERM grace (5 s) and some
GONE_TIMEOUT_S = 10.0
DEFAULT_CPU = 0.1  # the actor itself idles; the scheduler reserves the engine's CPU when a role asks
NODE_FIELDS = ("NodeID", "Alive", "NodeManagerAddress", "NodeName", "Resources", "Labels")

RemoteReplica: Any = ray.remote(ReplicaActor)  # handles are untyped: methods are called by name


def actor_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """`.options()` for a replica's actor: its name, lifetime, resources and the node it is pinned to."""
    replica = spec_from_wire(spec)
    options: dict[str, Any] = {
        "name": replica.name,
        "lifetime": "detached",
        "get_if_exists": True,  # a start repeated after an agent restart finds the running actor
        "max_restarts": 0,
        "num_cpus": replica.cpu if replica.cpu is not None else DEFAULT_CPU,
        "num_gpus": replica.gpus,
    }
    if replica.memory_gb:
        options["memory"] = int(replica.memory_gb * 2**30)
    if replica.gpu_type and replica.gpus:
        options["accelerator_type"] = replica.gpu_type
    if replica.node:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=replica.node, soft=False)
    return options


def nodes() -> list[dict[str, Any]]:
    return [{key: node.get(key) for key in NODE_FIELDS} for node in ray.nodes()]  # type: ignore[no-untyped-call]


def start(spec: Mapping[str, Any], pool: str, kv_events: bool) -> None:
    """Create the replica's actor (or find it running) and ask for its facts, which starts the engine."""
    actor = RemoteReplica.options(**actor_options(spec)).remote(dict(spec), pool, kv_events)
    actor.facts.remote()


def stop(name: str) -> None:
    """Stop the engine gracefully, kill the actor, and wait until Ray has released its name."""
    actor = _find(name)
    if actor is None:
        return
    with contextlib.suppress(RayActorError, ActorUnavailableError, GetTimeoutError):
        ray.get(actor.stop.remote(), timeout=STOP_TIMEOUT_S)
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while _find(name) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def replicas(pool: str) -> list[dict[str, Any]]:
    """Every replica actor of `pool` in the namespace: `{"name", "state", "facts"?, "message"?}`.

    `state` is `alive` (it answered; `facts` hold its answer), `pending` (not placed or constructed
    yet, or unreachable for a moment) or `dead` (Ray says it died). Actors that answer for another
    pool are left out; pending and dead ones cannot say whose they are, so the driver keeps only
    those it knows.
    """
    calls: dict[str, ray.ObjectRef[Any]] = {}
    for name in ray.util.list_named_actors():
        actor = _find(name)
        if actor is not None and hasattr(actor, "facts"):  # another program's actor has no `facts`
            calls[name] = actor.facts.remote()
    refs = list(calls.values())
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=FACTS_TIMEOUT_S) if refs else ([], [])
    found = [_answer(name, ref, ref in done) for name, ref in calls.items()]
    return [r for r in found if r["state"] != "alive" or r["facts"]["pool"] == pool]


def logs(name: str, tail_lines: int | None) -> str:
    actor = _find(name)
    if actor is None:
        raise KeyError(f"no replica actor named {name!r}")
    text: str = ray.get(actor.logs.remote(tail_lines), timeout=STOP_TIMEOUT_S)
    return text


def _answer(name: str, ref: ray.ObjectRef[Any], done: bool) -> dict[str, Any]:
    if not done:
        return {"name": name, "state": "pending"}
    try:
        return {"name": name, "state": "alive", "facts": ray.get(ref)}
    except ActorUnavailableError:
        return {"name": name, "state": "pending"}
    except RayActorError as exc:
        return {"name": name, "state": "dead", "message": _first_line(exc)}


def _find(name: str) -> Any:
    try:
        return ray.get_actor(name)
    except ValueError:
        return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
