"""What crosses process boundaries in the Ray pool, as plain JSON: replica specs and actor facts. Pure.

A spec travels driver -> agent (a JSON line) -> replica actor (a Ray argument), and comes back inside
the actor's facts, so a control plane that restarts can adopt a running replica with the spec it was
started with. Plain dicts rather than pickles keep the agent protocol readable in its log and keep
nodes and control plane free to run different patch versions of ComputeNet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from computenet.engines.base import ArgValue

from ..base import ReplicaSpec


def spec_to_wire(spec: ReplicaSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["args"] = dict(spec.args)
    data["gpu_ids"] = list(spec.gpu_ids)
    return data


def spec_from_wire(data: Mapping[str, Any]) -> ReplicaSpec:
    """The spec back; fields this version does not know are dropped, missing ones take their defaults."""
    known = {f.name for f in fields(ReplicaSpec)}
    values = {key: value for key, value in data.items() if key in known}
    args: dict[str, ArgValue] = dict(values.get("args") or {})
    return ReplicaSpec(**{**values, "args": args, "gpu_ids": tuple(values.get("gpu_ids") or ())})


@dataclass(frozen=True)
class ActorFacts:
    """What a replica actor knows about itself: where it runs and how its engine process is doing.

    Whether the engine is *ready* is not here: the driver probes the engine's health path itself,
    over the same network path the gateway will use.
    """

    name: str
    pool: str
    spec: ReplicaSpec
    node_id: str
    gpu_ids: tuple[int, ...] = ()  # the GPUs Ray gave the actor (its CUDA_VISIBLE_DEVICES)
    running: bool = False  # the engine process is alive now
    url: str | None = None
    pid: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    started_at: float | None = None
    message: str = ""
    kv_events: str | None = None
    kv_events_replay: str | None = None

    def to_wire(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**data, "spec": spec_to_wire(self.spec), "gpu_ids": list(self.gpu_ids)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> ActorFacts:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        return cls(
            **{**values, "spec": spec_from_wire(data["spec"]), "gpu_ids": tuple(values.get("gpu_ids") or ())}
        )
