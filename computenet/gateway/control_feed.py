"""Follow the control API's published endpoints into this gateway's `EndpointRegistry`.

A gateway replica of the distributed mode has no control plane in its process: it asks
any control-plane replica for ``GET /api/v1/endpoints`` and long-polls for the next
revision, applying each answer to its registry (only the deployments that changed, so
the routing state of the others is untouched). When the control API is unreachable the
gateway keeps routing to the endpoints it last heard of: stale addresses fail over
through the resilience layer, while an empty registry would refuse every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from computenet.api import PublishedEndpoints

from .registry import EndpointRegistry

log = logging.getLogger(__name__)

WAIT_S = 30.0  # how long the control API may hold one long-poll
FIRST_SYNC_S = 5.0  # how long `start` waits for the first answer before serving without it
MAX_RETRY_S = 5.0


def changes(
    held: Mapping[str, PublishedEndpoints], incoming: Sequence[PublishedEndpoints]
) -> tuple[list[PublishedEndpoints], list[str]]:
    """What to publish (new or changed deployments) and what to withdraw (gone), given what is held."""
    names = {p.deployment for p in incoming}
    publish = [p for p in incoming if held.get(p.deployment) != p]
    return publish, sorted(set(held) - names)


def parse_answer(body: Any) -> tuple[int, list[PublishedEndpoints]]:
    """The revision and deployments of an `EndpointList`; ValueError says what is wrong with it."""
    if not isinstance(body, dict) or not isinstance(body.get("revision"), int):
        raise ValueError("the answer is not an EndpointList (no integer `revision`)")
    items = body.get("items")
    if not isinstance(items, list):
        raise ValueError("the answer's `items` is not a list")
    return body["revision"], [PublishedEndpoints.from_wire(item) for item in items]


class ControlFeed:
    def __init__(
        self,
        control_url: str,
        registry: EndpointRegistry,
        *,
        api_key: str | None = None,
        wait_s: float = WAIT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = control_url.rstrip("/") + "/api/v1/endpoints"
        self.registry = registry
        self.revision: int | None = None
        self._wait_s = wait_s
        self._held: dict[str, PublishedEndpoints] = {}
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport = transport
        self._http: httpx.AsyncClient | None = None  # made in `start`, inside the serving event loop
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Fetch the endpoints once (briefly), then follow them in the background."""
        timeout = httpx.Timeout(5.0, read=self._wait_s + 10.0)
        self._http = httpx.AsyncClient(headers=self._headers, timeout=timeout, transport=self._transport)
        try:
            await asyncio.wait_for(self.poll(wait_s=0.0), FIRST_SYNC_S)
        except (TimeoutError, httpx.HTTPError, ValueError) as exc:
            log.warning("control feed: nothing from %s yet (%s); following in the background", self.url, exc)
        self._task = asyncio.create_task(self.follow(), name="control-feed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def follow(self) -> None:
        """Long-poll until cancelled; an error is logged once per outage and retried with backoff."""
        retry_s, failing = 0.5, False
        while True:
            try:
                await self.poll(wait_s=self._wait_s)
            except (httpx.HTTPError, ValueError) as exc:
                if not failing:
                    log.warning("control feed: %s: %s; keeping the endpoints held", self.url, _explain(exc))
                failing = True
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, MAX_RETRY_S)
                continue
            if failing:
                log.info("control feed: %s answers again (revision %s)", self.url, self.revision)
            retry_s, failing = 0.5, False

    async def poll(self, *, wait_s: float) -> None:
        """One request: returns when the control API answers a revision (or the wait ends)."""
        params: dict[str, str] = {"waitSeconds": str(wait_s)}
        if self.revision is not None:
            params["after"] = str(self.revision)
        assert self._http is not None, "start() the feed first"
        response = await self._http.get(self.url, params=params)
        response.raise_for_status()
        revision, published = parse_answer(response.json())
        self.apply(published)
        self.revision = revision

    def apply(self, published: Sequence[PublishedEndpoints]) -> None:
        publish, withdraw = changes(self._held, published)
        for item in publish:
            self.registry.publish_now(item.deployment, item.endpoints, model=item.model, policy=item.policy)
            self._held[item.deployment] = item
        for name in withdraw:
            self.registry.withdraw_now(name)
            del self._held[name]
        if publish or withdraw:
            log.info("control feed: published %s, withdrew %s", [p.deployment for p in publish], withdraw)


def _explain(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
        return (
            f"{exc.response.status_code}: the control API needs an admin key; "
            "set COMPUTENET_API_KEY for the gateway"
        )
    return str(exc) or type(exc).__name__
