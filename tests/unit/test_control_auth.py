"""Keys, usage and the admin scope of the control API, over HTTP with a real SQLite store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from computenet.api import UsageRecord
from computenet.control import create_control_app
from computenet.store import ResourceStore, sqlite_url

from .records import usage_record
from .test_control_api import NoReplicas


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ResourceStore]:
    opened = await ResourceStore.open(sqlite_url(tmp_path))
    yield opened
    await opened.close()


def _client(store: ResourceStore, *, auth_required: bool) -> httpx.AsyncClient:
    app = create_control_app(store, NoReplicas(), auth_required=auth_required)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
async def api(store: ResourceStore) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(store, auth_required=False) as client:
        yield client


@pytest.fixture
async def guarded(store: ResourceStore) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(store, auth_required=True) as client:
        yield client


async def test_create_shows_the_key_once_and_listing_never(
    api: httpx.AsyncClient, store: ResourceStore
) -> None:
    body = {"tenant": "acme", "models": ["llm"], "expiresIn": "30d", "limits": {"requestsPerMinute": 5}}
    created = await api.post("/v1/keys", json=body)
    assert created.status_code == 201
    record = created.json()
    text, key_id = record.pop("key"), record["keyId"]
    assert text.startswith(f"cn-{key_id}-")
    assert record["models"] == ["llm"] and record["limits"]["requestsPerMinute"] == 5
    assert record["limits"]["budgetPeriod"] == "month" and not record["admin"]
    stored = await store.keys.get(key_id)
    assert stored.matches(text) and stored.expires_at == pytest.approx(time.time() + 30 * 86400, abs=5)
    for resp in (await api.get("/v1/keys"), await api.get(f"/v1/keys/{key_id}")):
        assert resp.status_code == 200
        assert text not in resp.text and stored.secret_sha256 not in resp.text and '"key"' not in resp.text
    assert [k["keyId"] for k in (await api.get("/v1/keys")).json()["items"]] == [key_id]
    revoked = await api.delete(f"/v1/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert (await api.get("/v1/keys/nope")).status_code == 404


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (
            {"tenant": "acme", "limits": {"requestsPerMinute": -1}},
            "limits.requestsPerMinute",
            "greater than 0",
        ),
        ({"tenant": "acme", "limits": {"budgetPeriod": "week"}}, "limits.budgetPeriod", "'day', 'month'"),
        ({"tenant": "acme", "expiresIn": "3x"}, "expiresIn", "duration like 30d"),
        ({"tenant": "acme", "expiresAt": "2001-01-01"}, "expiresAt", "must be in the future"),
        ({"tenant": "acme", "expiresAt": "soon"}, "expiresAt", "datetime"),
        ({"tenant": "acme", "expiresIn": "1d", "expiresAt": 4e9}, "expiresIn", "not both"),
        ({"tenant": "no spaces"}, "tenant", "lowercase letters, digits"),
        ({"tenant": "Acme"}, "tenant", "lowercase letters, digits"),
        ({"tenant": "acme", "models": [""]}, "models", "must not be empty"),
        ({"tenant": "acme", "colour": "red"}, "colour", "Extra inputs"),
        ({}, "tenant", "Field required"),
    ],
)
async def test_invalid_key_requests_are_400_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, object], param: str, message: str
) -> None:
    resp = await api.post("/v1/keys", json=body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"].startswith(f"{param}: ") and message in error["message"]
    assert (await api.get("/v1/keys")).json()["items"] == []


async def test_usage_totals_and_their_window(api: httpx.AsyncClient, store: ResourceStore) -> None:
    now = time.time()
    await store.usage.write_usage(
        [_record("a", now - 10 * 86400, "acme"), _record("b", now, "acme"), _record("c", now, "beta")]
    )
    everything = (await api.get("/v1/usage")).json()
    assert everything["kind"] == "UsageTotals" and sum(i["requests"] for i in everything["items"]) == 3
    recent = (await api.get("/v1/usage", params={"since": "7d", "tenant": "acme"})).json()
    (item,) = recent["items"]
    assert (item["tenant"], item["requests"], item["promptTokens"], item["costUsd"]) == ("acme", 1, 10, 0.5)
    assert recent["since"].endswith("Z") and recent["until"] is None
    bad = await api.get("/v1/usage", params={"until": "tomorrow"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "until"


async def test_auth_off_needs_no_key(api: httpx.AsyncClient) -> None:
    for path in ("/v1/deployments", "/v1/keys", "/v1/usage", "/v1/replicas"):
        assert (await api.get(path)).status_code == 200


async def test_auth_on_needs_an_active_admin_key(guarded: httpx.AsyncClient, store: ResourceStore) -> None:
    _, admin = await store.keys.create("ops", admin=True)
    _, data_plane = await store.keys.create("acme")
    old, old_text = await store.keys.create("ops", admin=True)
    await store.keys.revoke(old.key_id)
    _, expired = await store.keys.create("ops", admin=True, expires_at=time.time() - 1)
    assert (await guarded.get("/v1/version")).status_code == 200
    assert (await guarded.get("/healthz")).status_code == 200
    missing = await guarded.get("/v1/deployments")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["type"] == "authentication_error"
    for text in ("garbage", admin + "x", old_text, expired, f"cn-{'0' * 12}-secret"):
        resp = await guarded.get("/v1/deployments", headers=_bearer(text))
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key", text
    assert (
        await guarded.get("/v1/deployments", headers={"Authorization": f"Basic {admin}"})
    ).status_code == 401
    forbidden = await guarded.get("/v1/keys", headers=_bearer(data_plane))
    assert forbidden.status_code == 403 and "data-plane key" in forbidden.json()["error"]["message"]
    for path in ("/v1/deployments", "/v1/keys", "/v1/usage", "/v1/replicas"):
        assert (await guarded.get(path, headers=_bearer(admin))).status_code == 200
    created = await guarded.post("/v1/keys", json={"tenant": "acme"}, headers=_bearer(admin))
    assert created.status_code == 201
    assert (await guarded.post("/v1/keys", json={"tenant": "acme"})).status_code == 401


def _bearer(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def _record(request_id: str, started_at: float, tenant: str) -> UsageRecord:
    return usage_record(request_id, started_at=started_at, tenant=tenant, latency_s=0.2)
