"""The few Kubernetes API verbs the driver uses, over aiohttp.

* server-side apply: `PATCH` with `application/apply-patch+yaml`, `fieldManager=computenet`, `force=true`
  (one field manager owns every field ComputeNet sets; applying the same object twice changes nothing);
* list with a label selector, returning the list's resourceVersion;
* watch from a resourceVersion (`410 Gone`, as a status or as an ERROR event, raises `Gone`: relist);
* merge patch (to lift scheduling gates), delete with a propagation policy, discovery of an API group.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .kubeconfig import ClusterAccess
from .names import MANAGER, selector_query

Manifest = dict[str, Any]
WATCH_TIMEOUT_S = 300  # the server ends each watch after this; the watcher resumes from the last version


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        collection = (
            f"{base}/namespaces/{namespace}/{self.plural}" if self.namespaced else f"{base}/{self.plural}"
        )
        return f"{collection}/{name}" if name else collection


KINDS: Mapping[str, Kind] = {
    "Node": Kind("v1", "nodes", namespaced=False),
    "Pod": Kind("v1", "pods"),
    "Service": Kind("v1", "services"),
    "Endpoints": Kind("v1", "endpoints"),
    "Deployment": Kind("apps/v1", "deployments"),
    "StatefulSet": Kind("apps/v1", "statefulsets"),
    "LeaderWorkerSet": Kind("leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
    "RoleBasedGroup": Kind("workloads.x-k8s.io/v1alpha1", "rolebasedgroups"),
}


class ApiError(Exception):
    """The API server refused a request; `status` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API answered {status}: {message}")
        self.status = status


class Gone(ApiError):
    """The resourceVersion a watch started from is too old: list again."""


class KubeClient:
    def __init__(self, access: ClusterAccess, *, timeout_s: float = 30.0) -> None:
        self._access = access
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._access.ssl if self._access.ssl is not None else False)
            self._session = aiohttp.ClientSession(connector=connector, read_bufsize=2**20)
        return self._session

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if token := self._access.token():
            headers["Authorization"] = token
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str | None = None,
    ) -> Any:
        data = json.dumps(body) if body is not None else None
        async with self._http().request(
            method,
            self._access.server + path,
            params=params,
            data=data,
            headers=self._headers(content_type),
            timeout=self._timeout,
        ) as resp:
            if resp.status >= 400:
                raise _error(resp.status, await resp.text())
            return await resp.json(content_type=None)

    async def get(self, kind: str, name: str, namespace: str) -> Manifest | None:
        try:
            result: Manifest = await self._call("GET", KINDS[kind].path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(
        self, kind: str, namespace: str, labels: Mapping[str, str] | None = None
    ) -> tuple[list[Manifest], str]:
        """The objects and the list's resourceVersion, to watch from."""
        params = {"labelSelector": selector_query(labels)} if labels else None
        result = await self._call("GET", KINDS[kind].path(namespace), params=params)
        return list(result.get("items") or []), str(result["metadata"].get("resourceVersion", ""))

    async def watch(
        self, kind: str, namespace: str, labels: Mapping[str, str], resource_version: str
    ) -> AsyncIterator[tuple[str, Manifest]]:
        """(type, object) events after `resource_version` until the server ends the watch."""
        params = {
            "watch": "true",
            "labelSelector": selector_query(labels),
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout.total, sock_read=WATCH_TIMEOUT_S + 30
        )
        async with self._http().get(
            self._access.server + KINDS[kind].path(namespace),
            params=params,
            headers=self._headers(),
            timeout=timeout,
        ) as resp:
            if resp.status >= 400:
                raise _error(resp.status, await resp.text())
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise _error(int(status.get("code", 500)), json.dumps(status))
                yield str(event["type"]), event["object"]

    async def apply(self, obj: Manifest) -> Manifest:
        """Server-side apply `obj` under ComputeNet's field manager: create it, or make it so."""
        meta = obj["metadata"]
        path = KINDS[obj["kind"]].path(meta.get("namespace", ""), meta["name"])
        params = {"fieldManager": MANAGER, "force": "true"}
        result: Manifest = await self._call(
            "PATCH", path, params=params, body=obj, content_type="application/apply-patch+yaml"
        )
        return result

    async def merge_patch(self, kind: str, name: str, namespace: str, patch: Manifest) -> Manifest:
        path = KINDS[kind].path(namespace, name)
        result: Manifest = await self._call(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )
        return result

    async def delete(self, kind: str, name: str, namespace: str, *, propagation: str = "Foreground") -> bool:
        """Delete, its dependents with it; False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        try:
            await self._call(
                "DELETE", KINDS[kind].path(namespace, name), body=body, content_type="application/json"
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def has_api(self, api_version: str) -> bool:
        """Whether the cluster serves `api_version` (a CRD is installed), from discovery."""
        try:
            await self._call("GET", f"/apis/{api_version}")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def logs(self, pod: str, namespace: str, *, tail_lines: int | None = None) -> str:
        params = {"container": "engine"} | ({"tailLines": str(tail_lines)} if tail_lines else {})
        async with self._http().get(
            self._access.server + KINDS["Pod"].path(namespace, pod) + "/log",
            params=params,
            headers=self._headers(),
            timeout=self._timeout,
        ) as resp:
            if resp.status >= 400:
                raise _error(resp.status, await resp.text())
            return await resp.text()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _error(status: int, text: str) -> ApiError:
    try:
        message = str(json.loads(text).get("message") or text)
    except (ValueError, AttributeError):
        message = text
    return (Gone if status == 410 else ApiError)(status, message[:500])
