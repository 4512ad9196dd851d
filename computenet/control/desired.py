"""What should run: a Deployment (and its Model) turned into replica specs. Pure."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace

from computenet.api import Deployment, Model
from computenet.pools import ReplicaSpec

from .roles import role_args


def desired_replicas(deployment: Deployment, model: Model) -> list[ReplicaSpec]:
    """One spec per replica of every role, named `<deployment>-<role>-<ordinal>`.

    Ordinal names keep `computenet logs` stable across restarts; a changed template
    (engine, args, model source) shows up as a different `template_hash`. Prefill and
    decode replicas get their engine's KV-connector args (`roles.py`).
    """
    spec = deployment.spec
    specs = []
    for role in spec.roles:
        runtime_args = next((r.args for r in model.spec.runtimes if r.engine == spec.engine), {})
        args = {**runtime_args, **spec.engine_args, **role.engine_args}
        args |= role_args(spec.engine, role.name, args)  # a prefill or decode replica's KV connector
        template = ReplicaSpec(
            name="",
            deployment=deployment.name,
            role=role.name,
            engine=spec.engine,
            served_name=model.name,
            source=model.spec.source,
            args=args,
            gpus=role.resources.gpus,
            gpu_type=role.resources.gpu_type,
            cpu=role.resources.cpu,
            memory_gb=role.resources.memory_gb,
            nodes=role.resources.nodes,
            initial_backoff_s=spec.restart_policy.initial_backoff_s,
            max_backoff_s=spec.restart_policy.max_backoff_s,
        )
        template = replace(template, template_hash=_hash(template))
        specs += [replace(template, name=f"{deployment.name}-{role.name}-{i}") for i in range(role.replicas)]
    return specs


def _hash(spec: ReplicaSpec) -> str:
    data = {k: v for k, v in asdict(spec).items() if k not in ("name", "template_hash")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]
