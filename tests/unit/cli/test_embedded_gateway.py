"""The gateway of `computenet up` follows the store: a Route or Provider that cannot be
served says why in its status (and `computenet get routes` shows it), the rest keep
serving, and a broken update of a Route keeps its last good version in service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from computenet.api import AnyResource, Route, load_text
from computenet.cli.embedded_gateway import follow_gateway_config
from computenet.cli.output import render
from computenet.gateway import Gateway
from computenet.store import ResourceStore, sqlite_url

PROVIDER = """
kind: Provider
metadata: {name: hosted}
spec:
  baseUrl: http://127.0.0.1:9/v1
  apiKey: {fromEnv: TEST_EMBEDDED_PROVIDER_KEY}
  models: [{name: gpt-test}]
"""


def route(model: str) -> str:
    return f"""
kind: Route
metadata: {{name: chat}}
spec: {{targets: [{{provider: hosted, model: {model}}}]}}
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ResourceStore]:
    opened = await ResourceStore.open(sqlite_url(tmp_path))
    yield opened
    await opened.close()


@contextlib.asynccontextmanager
async def following(store: ResourceStore) -> AsyncIterator[Gateway]:
    gateway = Gateway()
    task = asyncio.create_task(follow_gateway_config(store, gateway))
    try:
        yield gateway
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def apply(store: ResourceStore, text: str) -> None:
    for resource in load_text(text):
        await store.apply(resource)


async def ready(store: ResourceStore, kind: str, name: str, reason: str) -> dict[str, str]:
    """The Ready condition, once its reason is `reason` (the follower runs beside the test)."""
    async with asyncio.timeout(5):
        while True:
            resource = await store.get(kind, name)
            conditions = resource.to_wire().get("status", {}).get("conditions", [])  # type: ignore[union-attr]
            if conditions and conditions[0]["reason"] == reason:
                return conditions[0]  # type: ignore[no-any-return]
            await asyncio.sleep(0.02)


async def test_a_route_to_a_missing_provider_says_so_in_its_status_until_the_provider_comes(
    store: ResourceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_EMBEDDED_PROVIDER_KEY", "sk-test")
    async with following(store) as gateway:
        await apply(store, route("gpt-test"))
        condition = await ready(store, "Route", "chat", "InvalidSpec")
        assert condition["status"] == "False"
        assert "spec.targets[0].provider: no Provider named 'hosted'; apply it first" in condition["message"]
        assert gateway.table.lookup("chat") is None
        table = render("Route", [(await store.get("Route", "chat")).to_wire()], "table")
        assert "provider/hosted:gpt-test" in table and "InvalidSpec" in table

        await apply(store, PROVIDER)
        await ready(store, "Route", "chat", "Accepted")
        await ready(store, "Provider", "hosted", "Accepted")
        assert gateway.table.lookup("chat") is not None


async def test_a_broken_update_keeps_the_last_good_route_serving(
    store: ResourceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_EMBEDDED_PROVIDER_KEY", "sk-test")
    async with following(store) as gateway:
        await apply(store, PROVIDER + "---" + route("gpt-test"))
        await ready(store, "Route", "chat", "Accepted")
        before = gateway.table.lookup("chat")

        await apply(store, route("gpt-typo"))
        condition = await ready(store, "Route", "chat", "InvalidSpec")
        assert "lists no model 'gpt-typo'" in condition["message"]
        assert "still serves its previous version" in condition["message"]
        assert gateway.table.lookup("chat") is before


async def test_a_provider_whose_key_is_missing_is_not_ready_and_its_routes_say_why(
    store: ResourceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_EMBEDDED_PROVIDER_KEY", raising=False)
    async with following(store):
        await apply(store, PROVIDER + "---" + route("gpt-test"))
        provider = await ready(store, "Provider", "hosted", "InvalidSpec")
        assert "environment variable TEST_EMBEDDED_PROVIDER_KEY is not set; export it" in provider["message"]
        routed = await ready(store, "Route", "chat", "InvalidSpec")
        assert "Provider 'hosted' cannot be used; see its status" in routed["message"]


async def test_a_route_deleted_while_the_gateway_applies_does_not_stop_it_following(
    store: ResourceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete between listing the Routes and writing their status must not end the follower."""
    monkeypatch.setenv("TEST_EMBEDDED_PROVIDER_KEY", "sk-test")
    (ghost,) = load_text(route("gpt-test").replace("name: chat", "name: ghost"))
    listed = store.list

    async def with_ghost(kind: str) -> list[AnyResource]:
        found = await listed(kind)
        return [*found, ghost] if kind == "Route" else found

    monkeypatch.setattr(store, "list", with_ghost)
    async with following(store):
        await apply(store, PROVIDER + "---" + route("gpt-test"))
        await ready(store, "Route", "chat", "Accepted")


def test_every_gateway_kind_prints_as_a_table() -> None:
    text = """
kind: Tenant
metadata: {name: acme}
spec: {limits: {requestsPerMinute: 60}, budget: {limitUsd: 25}}
---
kind: APIKey
metadata: {name: ci}
spec: {tenant: acme, keyFromEnv: CI_KEY, models: [chat]}
"""
    tenant, key = (r.to_wire() for r in load_text(text))
    assert "$25/month" in render("Tenant", [tenant], "table")
    assert "env CI_KEY" in render("APIKey", [key], "table")
    (plain,) = load_text(route("gpt-test"))
    assert isinstance(plain, Route)
    assert "Pending" in render("Route", [plain.to_wire()], "table")
