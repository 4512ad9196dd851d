"""The control API over HTTP (in-process ASGI transport) with a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from computenet.control import create_control_app
from computenet.pools import ReplicaState
from computenet.store import NotFound, ResourceStore, sqlite_url

MODEL = {
    "apiVersion": "computenet.io/v1",
    "kind": "Model",
    "metadata": {"name": "llm"},
    "spec": {"source": "s"},
}
DEPLOYMENT = {
    "apiVersion": "computenet.io/v1",
    "kind": "Deployment",
    "metadata": {"name": "web"},
    "spec": {"model": "llm", "engine": "sim", "roles": [{"name": "server", "replicas": 1}]},
}


class NoReplicas:
    async def replicas(self) -> list[ReplicaState]:
        return []

    def nodes(self) -> list[dict[str, object]]:
        return []

    async def logs(self, replica: str, *, tail_lines: int | None = None) -> str:
        raise NotFound("Replica", replica)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    app = create_control_app(store, NoReplicas())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client
    await store.close()


async def test_apply_list_get_delete(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/apply", json={"items": [MODEL, DEPLOYMENT]})
    assert resp.json()["results"] == [
        {"kind": "Model", "name": "llm", "action": "created"},
        {"kind": "Deployment", "name": "web", "action": "created"},
    ]
    listed = (await api.get("/v1/deployments")).json()
    assert listed["kind"] == "DeploymentList" and [d["metadata"]["name"] for d in listed["items"]] == ["web"]
    got = (await api.get("/v1/deployments/web")).json()
    assert got["spec"]["roles"][0]["replicas"] == 1 and got["metadata"]["resourceVersion"] == 1
    assert (await api.delete("/v1/deployments/web")).status_code == 200
    missing = await api.get("/v1/deployments/web")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Deployment 'web' not found"


async def test_invalid_document_rejects_the_whole_apply(api: httpx.AsyncClient) -> None:
    bad = {**DEPLOYMENT, "spec": {**DEPLOYMENT["spec"], "roles": [{"replicas": -1}]}}
    resp = await api.post("/v1/apply", json={"items": [MODEL, bad], "source": "x.yaml"})
    assert resp.status_code == 400
    assert resp.json()["error"]["problems"] == ["x.yaml doc 2: spec.roles[0].replicas: must be >= 0, got -1"]
    assert (await api.get("/v1/models")).json()["items"] == []


async def test_dry_run_validates_and_writes_nothing(api: httpx.AsyncClient) -> None:
    resp = await api.post("/v1/apply", params={"dryRun": "true"}, json={"items": [MODEL]})
    assert resp.json()["results"] == [{"kind": "Model", "name": "llm", "action": "validated"}]
    assert (await api.get("/v1/models")).json()["items"] == []


async def test_put_with_a_stale_resource_version_is_409(api: httpx.AsyncClient) -> None:
    first = await api.put("/v1/deployments/web", json=DEPLOYMENT)
    assert first.status_code == 201
    read = first.json()
    update = {**read, "spec": {**read["spec"], "roles": [{"name": "server", "replicas": 2}]}}
    assert (await api.put("/v1/deployments/web", json=update)).status_code == 200
    stale = await api.put("/v1/deployments/web", json=update)  # still carries resourceVersion 1
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "conflict"


async def test_clients_cannot_write_status(api: httpx.AsyncClient) -> None:
    await api.put("/v1/deployments/web", json={**DEPLOYMENT, "status": {"readyReplicas": 5}})
    assert "status" not in (await api.get("/v1/deployments/web")).json()


async def test_body_must_match_the_url(api: httpx.AsyncClient) -> None:
    resp = await api.put("/v1/deployments/other", json=DEPLOYMENT)
    assert resp.status_code == 400 and "URL names Deployment 'other'" in resp.json()["error"]["message"]
    not_json = await api.post("/v1/apply", content=b"nope")
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]


async def test_openapi_document_lists_every_kind(api: httpx.AsyncClient) -> None:
    paths = (await api.get("/openapi.json")).json()["paths"]
    for plural in ("models", "deployments", "pools"):
        assert f"/v1/{plural}/{{name}}" in paths
    assert "/v1/apply" in paths and "/v1/replicas" in paths
