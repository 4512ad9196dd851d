"""Gateways following a distributed control plane: the endpoints API (long-poll on a revision), the
leader route, and `ControlFeed` applying what it hears to a gateway's registry.

The control API runs in-process over a real SQLite store; the feed reaches it through httpx's ASGI
transport, so the whole path (store -> API -> HTTP -> feed -> registry) is the real code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from computenet.api import Endpoint, PublishedEndpoints
from computenet.control import create_control_app
from computenet.control.distributed_api import add_distributed_routes
from computenet.control.pool_set import DriverSettings
from computenet.control.term import LeaderTerm
from computenet.gateway import EndpointRegistry
from computenet.gateway.control_feed import ControlFeed, changes, parse_answer
from computenet.store import ResourceStore, sqlite_url

BASE = "http://control"


def _endpoint(replica: str, deployment: str = "web") -> Endpoint:
    return Endpoint(
        replica=replica, deployment=deployment, model="m", url=f"http://10.0.0.1:{8000 + len(replica)}"
    )


def _published(deployment: str, *replicas: str) -> PublishedEndpoints:
    return PublishedEndpoints(deployment, "m", "random", tuple(_endpoint(r, deployment) for r in replicas))


class _Election:
    identity, name = "cp-a", "computenet-control"
    leading = True


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[tuple[ResourceStore, httpx.AsyncBaseTransport]]:
    store = await ResourceStore.open(sqlite_url(tmp_path))
    app = create_control_app(store, LeaderTerm(store, DriverSettings(tmp_path)))
    add_distributed_routes(app, store, _Election())
    yield store, httpx.ASGITransport(app=Starlette(routes=[Mount("/api", app=app)]))
    await store.close()


async def _get(transport: httpx.AsyncBaseTransport, path: str, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        return await client.get("/api/v1" + path, params=params)


def test_only_changed_deployments_are_republished_and_gone_ones_withdrawn() -> None:
    held = {"a": _published("a", "a-0"), "b": _published("b", "b-0")}
    publish, withdraw = changes(
        held, [_published("a", "a-0"), _published("b", "b-0", "b-1"), _published("c")]
    )
    assert [p.deployment for p in publish] == ["b", "c"] and withdraw == []
    assert changes(held, [_published("b", "b-0")]) == ([], ["a"])


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "not an EndpointList"),
        ({"revision": "3", "items": []}, "not an EndpointList"),
        ({"revision": 3, "items": {}}, "items"),
        (
            {
                "revision": 3,
                "items": [{"deployment": "d", "model": "m", "policy": "random", "endpoints": [{}]}],
            },
            "replica",
        ),
        (
            {
                "revision": 3,
                "items": [{"deployment": "d", "model": "m", "policy": {"preset": "nope"}, "endpoints": []}],
            },
            "policy",
        ),
    ],
)
def test_an_answer_of_the_wrong_shape_is_refused_naming_what_is_wrong(body: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_answer(body)


async def test_the_endpoints_route_answers_at_once_or_waits_for_a_newer_revision(
    control: tuple[ResourceStore, httpx.AsyncBaseTransport],
) -> None:
    store, transport = control
    first = (await _get(transport, "/endpoints")).json()
    assert first["items"] == []
    await store.endpoints.publish("web", [_endpoint("web-0")], model="m", policy="random")
    changed = (await _get(transport, "/endpoints", after=first["revision"], waitSeconds=30)).json()
    assert changed["revision"] > first["revision"]  # a newer revision than asked for: answered at once
    assert PublishedEndpoints.from_wire(changed["items"][0]) == _published("web", "web-0")
    unchanged = (await _get(transport, "/endpoints", after=changed["revision"], waitSeconds=0.2)).json()
    assert unchanged["revision"] == changed["revision"]  # nothing new: answered when the wait ended
    waiting = asyncio.create_task(_get(transport, "/endpoints", after=changed["revision"], waitSeconds=30))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await store.endpoints.withdraw("web")
    woken = (await asyncio.wait_for(waiting, 5)).json()  # the withdraw woke it, long before 30 s
    assert woken["items"] == [] and woken["revision"] > changed["revision"]


async def test_a_bad_wait_is_a_400_naming_the_parameter(
    control: tuple[ResourceStore, httpx.AsyncBaseTransport],
) -> None:
    _, transport = control
    response = await _get(transport, "/endpoints", waitSeconds=600)
    assert response.status_code == 400 and response.json()["error"]["param"] == "waitSeconds"


async def test_the_leader_route_and_a_follower_refusing_leader_only_questions(
    control: tuple[ResourceStore, httpx.AsyncBaseTransport],
) -> None:
    store, transport = control
    await store.leases.create("computenet-control", "cp-b", 8.0)
    leader = (await _get(transport, "/leader")).json()
    assert (leader["identity"], leader["holder"], leader["leaseDurationSeconds"]) == ("cp-a", "cp-b", 8.0)
    assert 0 < leader["expiresInSeconds"] <= 8.0
    for path in ("/replicas", "/nodes"):
        refused = await _get(transport, path)  # this replica runs no term: only the leader knows
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_leader"
        assert "GET /api/v1/leader" in refused.json()["error"]["message"]


async def test_a_gateway_follows_publishes_and_withdrawals(
    control: tuple[ResourceStore, httpx.AsyncBaseTransport],
) -> None:
    store, transport = control
    await store.endpoints.publish("web", [_endpoint("web-0")], model="m", policy="random")
    registry = EndpointRegistry()
    feed = ControlFeed(BASE, registry, wait_s=30, transport=transport)
    await feed.start()  # the first answer arrives before the gateway serves
    try:
        assert registry.models() == ["m"] and registry.replicas() == {"web-0"}
        await store.endpoints.publish(
            "web", [_endpoint("web-0"), _endpoint("web-1")], model="m", policy="random"
        )
        await _until(lambda: registry.replicas() == {"web-0", "web-1"})
        await store.endpoints.publish("chat", [_endpoint("chat-0", "chat")], model="m", policy="random")
        await store.endpoints.withdraw("web")
        await _until(lambda: registry.replicas() == {"chat-0"})
        assert registry.deployments_of("m") == ("chat",)
    finally:
        await feed.close()


async def test_an_unreachable_control_api_keeps_the_endpoints_held(tmp_path: Path) -> None:
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(200, json={"revision": 1, "items": [_published("web", "web-0").to_wire()]})
        raise httpx.ConnectError("connection refused")

    registry = EndpointRegistry()
    feed = ControlFeed(BASE, registry, transport=httpx.MockTransport(answer))
    await feed.start()
    try:
        await _until(lambda: calls >= 3)  # retried, with backoff
        assert registry.replicas() == {"web-0"}
    finally:
        await feed.close()


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
