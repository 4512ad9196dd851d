"""`KubernetesPool`: the `PoolDriver` over one Kubernetes cluster (a kubeconfig context and a namespace).

The cluster is the record. `start` server-side-applies a replica's objects under one field manager, so
starting a replica that already runs changes nothing; `replicas` is read from the cluster's workload
objects and pods on each call, so a control plane that restarts sees the replicas it started before,
and adopts them instead of starting copies. `close` therefore leaves replicas running: they outlive
the control plane by design, and a new one carries on with them (`stop` is what removes a replica).

Two watches (pods, endpoints) set the `watch()` event, and lift the scheduling gates of a prefill/decode
group whose StatefulSets all have their pods (gang admission, without the RoleBasedGroup CRD).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from pathlib import Path

import aiohttp

from computenet.api import NodeInfo, PoolSpec

from ..base import ReplicaSpec, ReplicaState
from .client import ApiError, Gone, KubeClient, Manifest
from .inventory import node_info
from .kubeconfig import load_access
from .names import DEPLOYMENT, GATE, REPLICA, ROLE, object_name, pool_selector
from .render import (
    LWS_API,
    PAIRED_ROLES,
    RBG_API,
    gated_stateful_set,
    is_grouped,
    replica_workload,
    role_based_group,
    service,
)
from .status import replica_states, wanted_replicas

log = logging.getLogger(__name__)

# Workload kinds, with the API a cluster must serve for the kind to be listed (None: always served).
WORKLOAD_KINDS = {
    "Deployment": None,
    "StatefulSet": None,
    "LeaderWorkerSet": LWS_API,
    "RoleBasedGroup": RBG_API,
}
STOP_TIMEOUT_S = 120.0
STOP_POLL_S = 0.5
WATCH_RETRY_S = 2.0


class KubernetesPool:
    def __init__(
        self, *, name: str, spec: PoolSpec, state_dir: Path, client: KubeClient | None = None
    ) -> None:
        if spec.type != "kubernetes":
            raise ValueError(f"pool {name!r} is a {spec.type} pool, not kubernetes")
        if client is None and importlib.util.find_spec("kubernetes") is None:
            # ImportError naming the package: the pool set reports which extra to install.
            raise ImportError(
                "the kubernetes pool loads kubeconfigs with the kubernetes package", name="kubernetes"
            )
        self.name = name
        self.region = spec.region
        self.zone = spec.zone
        self._spec = spec
        self._namespace = spec.namespace
        self._state_dir = state_dir  # unused: the cluster keeps everything; kept for the common signature
        self._client = client
        self._owned = pool_selector(name)
        self._changed = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []
        self._apis: dict[str, bool] = {}
        self._group_locks: dict[str, asyncio.Lock] = {}

    @property
    def client(self) -> KubeClient:
        if self._client is None:
            self._client = KubeClient(load_access(self._spec.kubeconfig, self._spec.context))
        return self._client

    async def nodes(self) -> list[NodeInfo]:
        nodes, _ = await self.client.list("Node", "")
        labels = {"computenet.io/pool": self.name, **self._spec.labels}
        return [node_info(node, labels) for node in nodes]

    async def start(self, spec: ReplicaSpec) -> None:
        if is_grouped(spec) and await self._serves(RBG_API):
            await self._apply_rbg_role(spec)
        elif is_grouped(spec):
            await self.client.apply(gated_stateful_set(spec, self.name, self._spec))
        else:
            if spec.nodes > 1 and not await self._serves(LWS_API):
                raise ValueError(
                    f"replica {spec.name} spans {spec.nodes} nodes, which needs the LeaderWorkerSet CRD "
                    f"({LWS_API}); install LeaderWorkerSet in the cluster of pool {self.name!r}"
                )
            await self.client.apply(replica_workload(spec, self.name, self._spec))
        await self.client.apply(service(spec.deployment, spec.role, self.name, self._spec))
        if is_grouped(spec):
            await self._admit(spec.deployment)
        self._changed.set()

    async def stop(self, name: str) -> None:
        labels = {**self._owned, REPLICA: object_name(name)}
        for kind, api in WORKLOAD_KINDS.items():
            if kind == "RoleBasedGroup" or (api and not await self._serves(api)):
                continue
            for obj in (await self.client.list(kind, self._namespace, labels))[0]:
                await self.client.delete(kind, obj["metadata"]["name"], self._namespace)
        if await self._serves(RBG_API):
            await self._remove_rbg_role(name)
        await self._wait_pods_gone(labels)
        await self.collect_garbage()
        self._changed.set()

    async def replicas(self) -> list[ReplicaState]:
        workloads = await self._workloads()
        pods, _ = await self.client.list("Pod", self._namespace, self._owned)
        nodes, _ = await self.client.list("Node", "")
        return replica_states(self.name, wanted_replicas(workloads), pods, nodes)

    async def logs(self, name: str, *, tail_lines: int | None = None) -> str:
        pods, _ = await self.client.list("Pod", self._namespace, {**self._owned, REPLICA: object_name(name)})
        if not pods:
            raise KeyError(f"no pod for replica {name!r} in pool {self.name!r}")
        leader = min(pods, key=lambda p: p["metadata"]["name"])
        return await self.client.logs(leader["metadata"]["name"], self._namespace, tail_lines=tail_lines)

    def watch(self) -> asyncio.Event:
        if not self._watchers:
            self._watchers = [
                asyncio.create_task(self._watch("Pod"), name=f"pool:{self.name}:watch-pods"),
                asyncio.create_task(self._watch("Endpoints"), name=f"pool:{self.name}:watch-endpoints"),
            ]
        return self._changed

    async def close(self) -> None:
        """Stop watching and release the connection; the replicas keep running (see the module doc)."""
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers = []
        if self._client is not None:
            await self._client.close()

    async def collect_garbage(self) -> list[str]:
        """Delete what this pool owns but no replica needs: a Service whose role has no replica left,
        a RoleBasedGroup with no role. Returns `kind/name` of each deleted object."""
        workloads = await self._workloads()
        roles = {(w.spec.deployment, w.spec.role) for w in wanted_replicas(workloads)}
        in_use = {(object_name(d), r) for d, r in roles}
        deleted = []
        for svc in (await self.client.list("Service", self._namespace, self._owned))[0]:
            labels = svc["metadata"].get("labels", {})
            if (labels.get(DEPLOYMENT), labels.get(ROLE)) not in in_use:
                await self.client.delete("Service", svc["metadata"]["name"], self._namespace)
                deleted.append(f"Service/{svc['metadata']['name']}")
        for obj in workloads:
            if obj["kind"] == "RoleBasedGroup" and not obj["spec"].get("roles"):
                await self.client.delete("RoleBasedGroup", obj["metadata"]["name"], self._namespace)
                deleted.append(f"RoleBasedGroup/{obj['metadata']['name']}")
        return deleted

    async def _serves(self, api_version: str) -> bool:
        if api_version not in self._apis:
            self._apis[api_version] = await self.client.has_api(api_version)
        return self._apis[api_version]

    async def _workloads(self) -> list[Manifest]:
        objects: list[Manifest] = []
        for kind, api in WORKLOAD_KINDS.items():
            if api is None or await self._serves(api):
                items, _ = await self.client.list(kind, self._namespace, self._owned)
                objects += [{**item, "kind": kind} for item in items]
        return objects

    def _group_lock(self, deployment: str) -> asyncio.Lock:
        return self._group_locks.setdefault(deployment, asyncio.Lock())

    async def _apply_rbg_role(self, spec: ReplicaSpec) -> None:
        """Add (or update) the replica's role in its deployment's RoleBasedGroup, as the cluster has it."""
        async with self._group_lock(spec.deployment):
            group = await self._rbg_specs(spec.deployment)
            group = [s for s in group if s.name != spec.name] + [spec]
            await self.client.apply(role_based_group(spec.deployment, group, self.name, self._spec))

    async def _remove_rbg_role(self, name: str) -> None:
        for rbg in (await self.client.list("RoleBasedGroup", self._namespace, self._owned))[0]:
            deployment = rbg["metadata"]["labels"].get(DEPLOYMENT, "")
            async with self._group_lock(deployment):
                group = [w.spec for w in wanted_replicas([{**rbg, "kind": "RoleBasedGroup"}])]
                rest = [s for s in group if s.name != name]
                if len(rest) == len(group):
                    continue
                if rest:
                    await self.client.apply(role_based_group(rest[0].deployment, rest, self.name, self._spec))
                else:
                    await self.client.delete("RoleBasedGroup", rbg["metadata"]["name"], self._namespace)

    async def _rbg_specs(self, deployment: str) -> list[ReplicaSpec]:
        rbg = await self.client.get("RoleBasedGroup", object_name(deployment), self._namespace)
        return [w.spec for w in wanted_replicas([{**rbg, "kind": "RoleBasedGroup"}])] if rbg else []

    async def _admit(self, deployment: str) -> None:
        """Lift the scheduling gates of a prefill/decode group once every replica of it has its pod.

        Without the RoleBasedGroup CRD each replica is its own StatefulSet; their pods are created behind
        a gate, so none is scheduled until the group is whole (at least a prefill and a decode replica,
        each wanted replica with a pod). Later replicas of an admitted group pass at once.
        """
        labels = {**self._owned, DEPLOYMENT: object_name(deployment)}
        sets, _ = await self.client.list("StatefulSet", self._namespace, labels)
        pods, _ = await self.client.list("Pod", self._namespace, labels)
        wanted = {s["metadata"]["labels"].get(REPLICA) for s in sets}
        roles = {s["metadata"]["labels"].get(ROLE) for s in sets}
        with_pods = {p["metadata"]["labels"].get(REPLICA) for p in pods}
        if not roles >= PAIRED_ROLES or not wanted <= with_pods:
            return
        for pod in pods:
            gates = pod["spec"].get("schedulingGates") or []
            if any(g.get("name") == GATE for g in gates):
                rest = [g for g in gates if g.get("name") != GATE]
                patch = {"spec": {"schedulingGates": rest or None}}
                await self.client.merge_patch("Pod", pod["metadata"]["name"], self._namespace, patch)

    async def _wait_pods_gone(self, labels: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT_S
        while (await self.client.list("Pod", self._namespace, labels))[0]:
            if loop.time() > deadline:
                log.warning(
                    "pool %s: pods of %s still terminating after %ss", self.name, labels, STOP_TIMEOUT_S
                )
                return
            await asyncio.sleep(STOP_POLL_S)

    async def _watch(self, kind: str) -> None:
        """List, then watch from the list's version; relist on 410 Gone, retry after errors."""
        version: str | None = None
        while True:
            try:
                if version is None:
                    _, version = await self.client.list(kind, self._namespace, self._owned)
                    self._changed.set()
                async for event, obj in self.client.watch(kind, self._namespace, self._owned, version):
                    version = obj["metadata"].get("resourceVersion", version)
                    if event != "BOOKMARK":
                        await self._on_event(kind, obj)
            except Gone:
                version = None
            except (aiohttp.ClientError, ApiError, TimeoutError, ValueError) as exc:
                log.warning("pool %s: watching %s failed (%s); retrying", self.name, kind, exc)
                await asyncio.sleep(WATCH_RETRY_S)

    async def _on_event(self, kind: str, obj: Manifest) -> None:
        self._changed.set()
        if kind == "Pod" and any(g.get("name") == GATE for g in obj["spec"].get("schedulingGates") or []):
            await self._admit(obj["metadata"].get("labels", {}).get(DEPLOYMENT, ""))
