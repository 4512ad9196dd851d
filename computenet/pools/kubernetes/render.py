"""Replica specs to Kubernetes objects. Pure: usable without a cluster (`computenet render`).

The shapes, one workload object per replica because ComputeNet's scheduler places each replica itself:

* a single-node replica: a Deployment of one pod (`Recreate`: the new pod needs the old one's GPUs);
* a replica over several nodes (tensor parallel): a LeaderWorkerSet of one group
  (`leaderworkerset.x-k8s.io/v1`);
* a prefill/decode deployment: one RoleBasedGroup (`workloads.x-k8s.io/v1alpha1`) with a role per replica,
  the router role depending on the others, when that CRD is installed; otherwise a StatefulSet per replica
  whose pod waits behind a scheduling gate until the driver admits the whole group (gang);
* a Service per (deployment, role), selecting that role's pods.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace

from computenet.api import PoolSpec

from ..base import ReplicaSpec
from .multinode import multinode_commands
from .names import (
    DEPLOYMENT,
    PORT,
    REPLICA,
    SPEC_ANNOTATION,
    object_name,
    pool_selector,
    replica_labels,
    role_selector,
    spec_to_json,
)
from .podtemplate import Manifest, pod_template

LWS_API = "leaderworkerset.x-k8s.io/v1"
RBG_API = "workloads.x-k8s.io/v1alpha1"
PAIRED_ROLES = frozenset({"prefill", "decode"})


def is_grouped(spec: ReplicaSpec) -> bool:
    """Whether the replica belongs to a prefill/decode group (which starts as a whole, or not at all)."""
    return spec.role in PAIRED_ROLES or spec.role == "router"


def replica_workload(spec: ReplicaSpec, pool_name: str, pool: PoolSpec) -> Manifest:
    """The Deployment, or the LeaderWorkerSet for a multi-node replica, that runs `spec`."""
    if spec.nodes > 1:
        return leader_worker_set(spec, pool_name, pool)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _replica_meta(spec, pool_name, pool),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": _replica_selector(spec, pool_name)},
            "template": pod_template(spec, pool_name, pool),
        },
    }


def leader_worker_set(spec: ReplicaSpec, pool_name: str, pool: PoolSpec) -> Manifest:
    """One group of `spec.nodes` pods: the leader on the scheduler's node, workers on the same GPU model.

    A failing pod recreates the whole group: a tensor-parallel engine cannot lose one rank and go on.
    """
    leader_argv, worker_argv = multinode_commands(spec)
    worker = replace(spec, node="")  # the scheduler chose the leader's node; LWS places the rest
    return {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": _replica_meta(spec, pool_name, pool),
        "spec": {
            "replicas": 1,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0},
            },
            "leaderWorkerTemplate": {
                "size": spec.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": pod_template(spec, pool_name, pool, argv=leader_argv, member="leader"),
                "workerTemplate": pod_template(worker, pool_name, pool, argv=worker_argv, member="worker"),
            },
        },
    }


def gated_stateful_set(spec: ReplicaSpec, pool_name: str, pool: PoolSpec, *, gated: bool = True) -> Manifest:
    """One prefill/decode/router replica without the RoleBasedGroup CRD: a StatefulSet of one pod.

    With `gated`, its pod is created behind a scheduling gate, and the driver lifts the gates of a
    deployment's pods together once its group is complete; `computenet render` leaves gates out, as
    nothing would lift them in a cluster the driver does not manage.
    """
    _single_node_only(spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _replica_meta(spec, pool_name, pool),
        "spec": {
            "replicas": 1,
            "serviceName": service_name(spec.deployment, spec.role),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _replica_selector(spec, pool_name)},
            "template": pod_template(spec, pool_name, pool, gated=gated),
        },
    }


def role_based_group(
    deployment: str, specs: Sequence[ReplicaSpec], pool_name: str, pool: PoolSpec
) -> Manifest:
    """A prefill/decode deployment as one RoleBasedGroup: a role per replica, each pinned to its node.

    The router starts after every prefill and decode role (`dependencies`); a pod that fails is
    restarted alone (`restartPolicy: None`), as the gateway routes around a missing replica.
    """
    roles = [_rbg_role(spec, pool_name, pool, specs) for spec in sorted(specs, key=lambda s: s.name)]
    return {
        "apiVersion": RBG_API,
        "kind": "RoleBasedGroup",
        "metadata": {
            "name": object_name(deployment),
            "namespace": pool.namespace,
            "labels": {**pool_selector(pool_name), DEPLOYMENT: object_name(deployment)},
        },
        "spec": {"roles": roles},
    }


def rbg_role_name(spec: ReplicaSpec) -> str:
    """`prefill-0` for replica `<deployment>-prefill-0`: short, as RBG prefixes it with the group's name."""
    return object_name(spec.name.removeprefix(f"{spec.deployment}-"))


def _rbg_role(spec: ReplicaSpec, pool_name: str, pool: PoolSpec, group: Sequence[ReplicaSpec]) -> Manifest:
    _single_node_only(spec)
    role: Manifest = {
        "name": rbg_role_name(spec),
        "replicas": 1,
        "restartPolicy": "None",
        "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
        "workload": {"apiVersion": "apps/v1", "kind": "StatefulSet"},
        "template": pod_template(spec, pool_name, pool),
    }
    if spec.role == "router":
        role["dependencies"] = sorted(rbg_role_name(s) for s in group if s.role in PAIRED_ROLES)
    return role


def service_name(deployment: str, role: str) -> str:
    return object_name(deployment, role)


def service(deployment: str, role: str, pool_name: str, pool: PoolSpec) -> Manifest:
    """A ClusterIP Service over a role's pods: one stable name for clients outside ComputeNet's gateway."""
    selector = role_selector(pool_name, deployment, role)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(deployment, role), "namespace": pool.namespace, "labels": selector},
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_manifests(
    specs: Iterable[ReplicaSpec], pool_name: str, pool: PoolSpec, *, rbg: bool, gang_gates: bool = True
) -> list[Manifest]:
    """Every object for `specs`: workloads first, then one Service per (deployment, role).

    `rbg`: render prefill/decode deployments as RoleBasedGroups (the CRD is installed); otherwise as
    StatefulSets, behind scheduling gates when `gang_gates`.
    """
    by_deployment: dict[str, list[ReplicaSpec]] = defaultdict(list)
    for spec in specs:
        by_deployment[spec.deployment].append(spec)
    objects: list[Manifest] = []
    roles: set[tuple[str, str]] = set()
    for deployment, group in sorted(by_deployment.items()):
        roles |= {(deployment, spec.role) for spec in group}
        if rbg and any(is_grouped(spec) for spec in group):
            objects.append(role_based_group(deployment, group, pool_name, pool))
            continue
        for spec in sorted(group, key=lambda s: s.name):
            if is_grouped(spec):
                objects.append(gated_stateful_set(spec, pool_name, pool, gated=gang_gates))
            else:
                objects.append(replica_workload(spec, pool_name, pool))
    objects += [service(deployment, role, pool_name, pool) for deployment, role in sorted(roles)]
    return objects


def _single_node_only(spec: ReplicaSpec) -> None:
    if spec.nodes > 1:
        raise ValueError(
            f"replica {spec.name}: a {spec.role} replica over {spec.nodes} nodes is not supported on "
            "Kubernetes yet; give the role resources.nodes: 1, or serve the model with a `server` role"
        )


def _replica_meta(spec: ReplicaSpec, pool_name: str, pool: PoolSpec) -> Manifest:
    return {
        "name": object_name(spec.name),
        "namespace": pool.namespace,
        "labels": replica_labels(spec, pool_name),
        "annotations": {SPEC_ANNOTATION: spec_to_json(spec)},
    }


def _replica_selector(spec: ReplicaSpec, pool_name: str) -> dict[str, str]:
    """What a workload selects: immutable on Kubernetes, so it leaves out the template hash."""
    return {**pool_selector(pool_name), REPLICA: object_name(spec.name)}
