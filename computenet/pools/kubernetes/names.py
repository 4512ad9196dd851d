"""What ComputeNet writes on the Kubernetes objects it owns: names, labels, and the replica spec itself.

Everything the driver knows about a replica is kept on the cluster, not in memory: the labels select
what this pool owns (garbage collection, listing) and the `computenet.io/replica-spec` annotation holds
the whole `ReplicaSpec`, so a restarted control plane reads back the same replicas it started.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from ..base import ReplicaSpec

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "computenet"  # the managed-by value, and the field manager of every server-side apply
POOL = "computenet.io/pool"
DEPLOYMENT = "computenet.io/deployment"
ROLE = "computenet.io/role"
REPLICA = "computenet.io/replica"
TEMPLATE_HASH = "computenet.io/template-hash"
MEMBER = "computenet.io/member"  # leader or worker, in a multi-node replica
SPEC_ANNOTATION = "computenet.io/replica-spec"
GATE = "computenet.io/group-admission"  # the scheduling gate a PD group's pods wait behind

PORT = 8000  # every engine listens here inside its pod: each pod has its own IP
MAX_NAME = 63  # DNS-1123 label: Service names, label values, and what pod names are built from

_NOT_NAME = re.compile(r"[^a-z0-9-]+")


def object_name(*parts: str, limit: int = MAX_NAME) -> str:
    """`parts` joined by dashes as a DNS-1035 label: lower case, starting with a letter, at most `limit`.

    A name that would be too long keeps its start and gets a hash of the whole, so two long names
    never collide and the same input always gives the same name (applies stay idempotent).
    """
    name = _NOT_NAME.sub("-", "-".join(parts).lower()).strip("-") or "x"
    if not name[0].isalpha():
        name = "cn-" + name
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: limit - 11].rstrip('-')}-{digest}"


def pool_selector(pool: str) -> dict[str, str]:
    """The labels every object this pool owns carries."""
    return {MANAGED_BY: MANAGER, POOL: object_name(pool)}


def role_selector(pool: str, deployment: str, role: str) -> dict[str, str]:
    """The pods of one role of one deployment: what its Service selects."""
    return {**pool_selector(pool), DEPLOYMENT: object_name(deployment), ROLE: role}


def replica_labels(spec: ReplicaSpec, pool: str) -> dict[str, str]:
    labels = role_selector(pool, spec.deployment, spec.role)
    return {**labels, REPLICA: object_name(spec.name), TEMPLATE_HASH: spec.template_hash or "none"}


def selector_query(labels: Mapping[str, str]) -> str:
    """A labelSelector query value: `k=v,k2=v2`."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def spec_to_json(spec: ReplicaSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True, separators=(",", ":"))


def spec_from_json(text: str) -> ReplicaSpec | None:
    """The spec an object carries, or None when the annotation is missing or not one of ours."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    known = {f.name for f in fields(ReplicaSpec)}
    try:
        values = {key: value for key, value in data.items() if key in known}
        values["gpu_ids"] = tuple(values.get("gpu_ids", ()))
        return ReplicaSpec(**values)
    except TypeError:
        return None
