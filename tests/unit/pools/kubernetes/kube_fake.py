"""A fake Kubernetes API server at the HTTP level, for the Kubernetes pool's tests.

There is no API server on the test machines, so this aiohttp app on 127.0.0.1 implements the verbs the
driver uses, on the resources it uses, with the API's semantics where the driver depends on them:

* get / list (equality label selectors) / watch (events after a resourceVersion; a version older than
  the last compaction answers an ERROR event with code 410, as the real server does) / server-side
  apply (`application/apply-patch+yaml`, `fieldManager` required; one manager owns all fields, so the
  applied object replaces labels, annotations and spec; an apply that changes nothing bumps no
  version) / merge patch / delete with cascading to owned objects;
* a monotonic resourceVersion counter over every object;
* discovery of the LeaderWorkerSet and RoleBasedGroup API groups, installed or not;
* the controllers' and kubelet's part, which a test drives: each workload object gets its pods (a
  Deployment's, a StatefulSet's, a LeaderWorkerSet's leader and workers, a RoleBasedGroup's roles') as
  its controller would create them, and each Service its Endpoints; `make_ready`, `crash_loop`,
  `delete_node` and `set_node_ready` play the kubelet and the node lifecycle controller.

It is a test double, not an API server: no admission, no defaulting, no field ownership per manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from ...servers import serve_aiohttp

Obj = dict[str, Any]
TOKEN = "test-token"
LWS_API = "leaderworkerset.x-k8s.io/v1"
RBG_API = "workloads.x-k8s.io/v1alpha1"

# plural -> (kind, apiVersion, namespaced)
RESOURCES = {
    "nodes": ("Node", "v1", False),
    "pods": ("Pod", "v1", True),
    "services": ("Service", "v1", True),
    "endpoints": ("Endpoints", "v1", True),
    "deployments": ("Deployment", "apps/v1", True),
    "statefulsets": ("StatefulSet", "apps/v1", True),
    "leaderworkersets": ("LeaderWorkerSet", LWS_API, True),
    "rolebasedgroups": ("RoleBasedGroup", RBG_API, True),
}
WORKLOADS = {"Deployment", "StatefulSet", "LeaderWorkerSet", "RoleBasedGroup"}


class FakeKube:
    def __init__(self, *, crds: Iterable[str] = (LWS_API, RBG_API)) -> None:
        self.crds = set(crds)
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (kind, namespace, name)
        self.events: list[tuple[int, str, str, Obj]] = []  # (resourceVersion, kind, type, object)
        self.version = 0
        self.compacted = 0  # watches from versions below this get 410 Gone
        self.requests: list[tuple[str, str]] = []
        self._uids = itertools.count(1)
        self._wakeup = asyncio.Event()
        self._closing = False
        self._epoch = 0  # bumped to end every open watch, as an API server restart does

    # --- the HTTP side ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized")
        parts = request.path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 3:
            return self._discovery(f"{parts[1]}/{parts[2]}")
        try:
            api, rest = ("v1", parts[2:]) if parts[0] == "api" else (f"{parts[1]}/{parts[2]}", parts[3:])
            namespace = ""
            if rest[0] == "namespaces" and len(rest) > 2:
                namespace, rest = rest[1], rest[2:]
            kind, kind_api, _ = RESOURCES[rest[0]]
        except (IndexError, KeyError):
            return _status(404, f"no resource at {request.path}")
        if kind_api != api or (kind_api in (LWS_API, RBG_API) and kind_api not in self.crds):
            return _status(404, f"the server could not find the requested resource ({request.path})")
        name = rest[1] if len(rest) > 1 else None
        if len(rest) > 2 and rest[2] == "log" and request.method == "GET":
            return self._logs(namespace, name or "", request)
        return await self._verb(request, kind, namespace, name)

    async def _verb(self, request: web.Request, kind: str, ns: str, name: str | None) -> web.StreamResponse:
        if name is None and request.method == "GET":
            selector = _parse_selector(request.query.get("labelSelector", ""))
            if request.query.get("watch") == "true":
                return await self._watch(request, kind, ns, selector)
            items = [o for (k, n, _), o in sorted(self.objects.items()) if k == kind and n == ns]
            items = [o for o in items if _matches(o, selector)]
            meta = {"resourceVersion": str(self.version)}
            return web.json_response({"kind": f"{kind}List", "metadata": meta, "items": items})
        if name is None:
            return _status(405, "method not allowed on a collection")
        if request.method == "GET":
            obj = self.objects.get((kind, ns, name))
            return web.json_response(obj) if obj else _status(404, f'{kind} "{name}" not found')
        if request.method == "PATCH":
            return await self._patch(request, kind, ns, name)
        if request.method == "DELETE":
            if (kind, ns, name) not in self.objects:
                return _status(404, f'{kind} "{name}" not found')
            self.delete(kind, ns, name)
            return _status(200, "deleted")
        return _status(405, "method not allowed")

    async def _patch(self, request: web.Request, kind: str, ns: str, name: str) -> web.Response:
        content_type = request.headers.get("Content-Type", "")
        body = yaml.safe_load(await request.text())
        if content_type == "application/merge-patch+json":
            obj = self.objects.get((kind, ns, name))
            if obj is None:
                return _status(404, f'{kind} "{name}" not found')
            return web.json_response(self._store(_merge(copy.deepcopy(obj), body)))
        if content_type != "application/apply-patch+yaml":
            return _status(415, f"unsupported patch type {content_type}")
        if not request.query.get("fieldManager"):
            return _status(422, "fieldManager is required for apply patch")
        meta = body.get("metadata") or {}
        if body.get("kind") != kind or meta.get("name") != name or meta.get("namespace", ns) != ns:
            return _status(400, "the applied object's kind, name or namespace does not match the URL")
        return web.json_response(self.apply(body))

    def _discovery(self, api_version: str) -> web.Response:
        if api_version not in self.crds and api_version != "apps/v1":
            return _status(404, "the server could not find the requested resource")
        names = [plural for plural, (_, api, _) in RESOURCES.items() if api == api_version]
        resources = [{"name": n, "namespaced": True, "kind": RESOURCES[n][0], "verbs": ["*"]} for n in names]
        return web.json_response(
            {"kind": "APIResourceList", "groupVersion": api_version, "resources": resources}
        )

    def _logs(self, ns: str, name: str, request: web.Request) -> web.Response:
        if ("Pod", ns, name) not in self.objects:
            return _status(404, f'pod "{name}" not found')
        lines = [f"{name} line {i}\n" for i in range(5)]
        tail = int(request.query.get("tailLines", "0"))
        return web.Response(text="".join(lines[-tail:] if tail else lines))

    async def _watch(
        self, request: web.Request, kind: str, ns: str, selector: dict[str, str]
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.version)
        response = web.StreamResponse()
        await response.prepare(request)
        if since < self.compacted:
            gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.query.get("timeoutSeconds", "60"))
        epoch = self._epoch
        while not self._closing and epoch == self._epoch and loop.time() < deadline:
            for version, event_kind, type_, obj in self.events:
                in_scope = obj["metadata"].get("namespace", "") == ns and _matches(obj, selector)
                if version > since and event_kind == kind and in_scope:
                    await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
            since = self.version
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(0.0, deadline - loop.time()))
        return response

    # --- the store -------------------------------------------------------------------------------

    def apply(self, body: Obj) -> Obj:
        kind, meta = body["kind"], body["metadata"]
        key = (kind, meta.get("namespace", ""), meta["name"])
        old = self.objects.get(key)
        if old is None:
            new = copy.deepcopy(body)
            new["metadata"] |= {
                "uid": f"uid-{next(self._uids)}",
                "creationTimestamp": _now(),
                "generation": 1,
            }
        else:
            new = copy.deepcopy(old)
            for field in ("labels", "annotations"):  # the one manager owns them: what it omits goes
                new["metadata"].pop(field, None)
                if field in meta:
                    new["metadata"][field] = copy.deepcopy(meta[field])
            for field in set(body) - {"apiVersion", "kind", "metadata", "status"}:
                new[field] = copy.deepcopy(body[field])
            if new == old:  # nothing changed: no new version, no event
                return old
            new["metadata"]["generation"] = old["metadata"]["generation"] + (
                new.get("spec") != old.get("spec")
            )
        stored = self._store(new)
        self._run_controllers(stored)
        return stored

    def _store(self, obj: Obj, type_: str | None = None) -> Obj:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        type_ = type_ or ("MODIFIED" if key in self.objects else "ADDED")
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        self.objects[key] = obj
        self.events.append((self.version, obj["kind"], type_, copy.deepcopy(obj)))
        self._wake()
        if obj["kind"] == "Pod":
            self._sync_endpoints()
        return obj

    def delete(self, kind: str, ns: str, name: str) -> None:
        obj = self.objects.pop((kind, ns, name))
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.events.append((self.version, kind, "DELETED", copy.deepcopy(obj)))
        self._wake()
        uid = obj["metadata"].get("uid")
        for (k, n, child), other in list(self.objects.items()):  # cascade to what it owns
            if any(ref.get("uid") == uid for ref in other["metadata"].get("ownerReferences") or []):
                self.delete(k, n, child)
        if kind == "Pod":
            self._sync_endpoints()

    def compact(self) -> None:
        """Forget history, as etcd compaction does: a watch from an older version gets 410 Gone."""
        self.compacted = self.version + 1

    def drop_watches(self) -> None:
        """End every open watch: clients must watch again from the last version they saw."""
        self._epoch += 1
        self._wake()

    def close(self) -> None:
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    # --- the controllers' part -------------------------------------------------------------------

    def _run_controllers(self, obj: Obj) -> None:
        if obj["kind"] in WORKLOADS:
            self._reconcile_pods(obj)
        elif obj["kind"] == "Service":
            meta = obj["metadata"]
            endpoints = {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {**copy.deepcopy(meta)},
                "subsets": [],
            }
            endpoints["metadata"]["ownerReferences"] = [
                {"uid": meta["uid"], "kind": "Service", "name": meta["name"]}
            ]
            if ("Endpoints", meta["namespace"], meta["name"]) not in self.objects:
                self._store(endpoints)
            self._sync_endpoints()

    def _reconcile_pods(self, workload: Obj) -> None:
        """Create the pods the workload asks for (recreating those whose template changed), drop the rest."""
        meta = workload["metadata"]
        wanted = dict(_pod_templates(workload))
        owned = {
            n: p
            for (k, ns, n), p in self.objects.items()
            if k == "Pod"
            and any(r.get("uid") == meta["uid"] for r in p["metadata"].get("ownerReferences") or [])
        }
        for name, pod in owned.items():
            if name not in wanted or pod["metadata"]["annotations"].get("fake/template") != _digest(
                wanted[name]
            ):
                self.delete("Pod", meta["namespace"], name)
        for name, template in wanted.items():
            if ("Pod", meta["namespace"], name) in self.objects:
                continue
            pod_meta = copy.deepcopy(template.get("metadata") or {})
            pod_meta |= {"name": name, "namespace": meta["namespace"], "uid": f"uid-{next(self._uids)}"}
            pod_meta["creationTimestamp"] = _now()
            pod_meta["annotations"] = {**pod_meta.get("annotations", {}), "fake/template": _digest(template)}
            pod_meta["ownerReferences"] = [
                {"uid": meta["uid"], "kind": workload["kind"], "name": meta["name"]}
            ]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": pod_meta,
                "spec": copy.deepcopy(template["spec"]),
            }
            pod["status"] = {"phase": "Pending"}
            self._store(pod)

    def _sync_endpoints(self) -> None:
        for (kind, ns, name), svc in list(self.objects.items()):
            endpoints = self.objects.get(("Endpoints", ns, name))
            if kind != "Service" or endpoints is None:
                continue
            selector = svc["spec"].get("selector") or {}
            ready = sorted(
                p["status"]["podIP"]
                for (k, n, _), p in self.objects.items()
                if k == "Pod" and n == ns and _labels_match(p, selector) and _ready(p)
            )
            subsets = (
                [{"addresses": [{"ip": ip} for ip in ready], "ports": [{"port": 8000}]}] if ready else []
            )
            if endpoints.get("subsets") != subsets:
                self._store({**copy.deepcopy(endpoints), "subsets": subsets})

    # --- what a test does as kubelet, scheduler or node controller -------------------------------

    def add_node(
        self,
        name: str,
        *,
        gpus: int = 8,
        product: str = "NVIDIA-H100-80GB-HBM3",
        ready: bool = True,
        taints: Iterable[Obj] = (),
        labels: Mapping[str, str] | None = None,
    ) -> Obj:
        node_labels = {"kubernetes.io/hostname": name, **(labels or {})}
        if gpus:
            node_labels |= {
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.memory": "81559",
                "nvidia.com/gpu.count": str(gpus),
            }
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": node_labels, "uid": f"uid-{next(self._uids)}"},
            "spec": {"taints": list(taints)},
            "status": {
                "allocatable": {"cpu": "96", "memory": "1056000000Ki", "nvidia.com/gpu": str(gpus)},
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "addresses": [{"type": "InternalIP", "address": f"10.0.0.{len(self.objects) % 250 + 1}"}],
            },
        }  # fmt: skip
        return self._store(node)

    def set_node_ready(self, name: str, ready: bool) -> None:
        node = copy.deepcopy(self.objects[("Node", "", name)])
        node["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        self._store(node)

    def delete_node(self, name: str) -> None:
        self.delete("Node", "", name)

    def pods(self, **labels: str) -> list[Obj]:
        return [o for (k, _, _), o in sorted(self.objects.items()) if k == "Pod" and _labels_match(o, labels)]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for (k, _, _), o in sorted(self.objects.items()) if k == kind]

    def make_ready(self, pod_name: str, ip: str, *, namespace: str = "default") -> Obj:
        """Bind the pod to the node its affinity names (kube-scheduler) and report it running and ready."""
        pod = copy.deepcopy(self.objects[("Pod", namespace, pod_name)])
        if pod["spec"].get("schedulingGates"):
            raise AssertionError(f"pod {pod_name} is gated; kube-scheduler would not bind it")
        pod["spec"]["nodeName"] = _affinity_node(pod) or next(
            n["metadata"]["name"] for n in self.of_kind("Node")
        )
        pod["status"] = {
            "phase": "Running", "podIP": ip,
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": "engine", "ready": True, "restartCount": 0,
                "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
            }],
        }  # fmt: skip
        return self._store(pod)

    def crash_loop(self, pod_name: str, exit_code: int, *, namespace: str = "default") -> Obj:
        pod = copy.deepcopy(self.objects[("Pod", namespace, pod_name)])
        pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
        pod["status"]["containerStatuses"] = [{
            "name": "engine", "ready": False, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": exit_code}},
        }]  # fmt: skip
        return self._store(pod)


def kubeconfig(server: str, path: Path) -> Path:
    """A kubeconfig whose only context reaches the fake at `server` with its token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": TOKEN}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def serve_fake(fake: FakeKube) -> AsyncIterator[str]:
    async with serve_aiohttp(fake.app(), shutdown_timeout_s=1.0) as url:
        try:
            yield url
        finally:
            fake.close()  # end the watch streams before the server waits on them


def _pod_templates(workload: Obj) -> Iterable[tuple[str, Obj]]:
    name, spec = workload["metadata"]["name"], workload["spec"]
    kind = workload["kind"]
    if kind == "Deployment":
        yield from ((f"{name}-pod-{i}", spec["template"]) for i in range(spec.get("replicas", 1)))
    elif kind == "StatefulSet":
        yield from ((f"{name}-{i}", spec["template"]) for i in range(spec.get("replicas", 1)))
    elif kind == "LeaderWorkerSet":
        template = spec["leaderWorkerTemplate"]
        for group in range(spec.get("replicas", 1)):
            yield f"{name}-{group}", template.get("leaderTemplate") or template["workerTemplate"]
            yield from (
                (f"{name}-{group}-{w}", template["workerTemplate"]) for w in range(1, template["size"])
            )
    elif kind == "RoleBasedGroup":
        for role in spec["roles"]:
            yield from (
                (f"{name}-{role['name']}-{i}", role["template"]) for i in range(role.get("replicas", 1))
            )


def _affinity_node(pod: Obj) -> str | None:
    required = ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms", []):
        for expression in term.get("matchExpressions", []):
            if expression["key"] == "kubernetes.io/hostname":
                return str(expression["values"][0])
    return None


def _ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _parse_selector(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if part)


def _labels_match(obj: Obj, selector: Mapping[str, str]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _matches(obj: Obj, selector: Mapping[str, str]) -> bool:
    return _labels_match(obj, selector)


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    target = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


def _digest(template: Obj) -> str:
    return str(hash(json.dumps(template, sort_keys=True)))


def _now() -> str:
    return "2025-01-01T00:00:00Z"


def _status(code: int, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
    return web.json_response(body, status=code)
