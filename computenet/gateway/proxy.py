"""Send a request to one of a model's replicas, retrying on another while that is safe.

A retry is safe until the first byte has gone to the client: connection errors, 5xx
answers and streams that end before their first chunk all move on to the next replica.
Once a stream has started it is relayed chunk by chunk without buffering, and a client
that goes away closes the upstream connection at once, so the engine stops generating.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

import aiohttp
from starlette.responses import Response

from computenet.api import Endpoint
from computenet.engines.streaming import EventStreamResponse

from .errors import no_capacity
from .metrics import GatewayMetrics
from .policies import LoadTracker, RoutingPolicy
from .registry import Route

log = logging.getLogger(__name__)

REPLICA_HEADER = "x-computenet-replica"


@dataclass(frozen=True)
class ProxySettings:
    max_attempts: int = 3
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 600.0


class _Failed(Exception):
    """One attempt failed before anything reached the client."""


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        policies: Mapping[str, RoutingPolicy],
        metrics: GatewayMetrics,
        settings: ProxySettings,
    ) -> None:
        self._session = session
        self._policies = policies
        self._metrics = metrics
        self._settings = settings
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )
        self.load = LoadTracker()

    async def forward(self, path: str, body: bytes, route: Route, *, stream: bool) -> Response:
        policy = self._policies[route.policy]
        tried: set[str] = set()
        errors: list[str] = []
        started = time.monotonic()
        while len(tried) < self._settings.max_attempts:
            candidates = [e for e in route.endpoints if e.replica not in tried]
            if not candidates:
                break
            endpoint = policy.pick(route.model, candidates, self.load)
            tried.add(endpoint.replica)
            try:
                return await self._attempt(endpoint, path, body, stream=stream, started=started)
            except _Failed as exc:
                errors.append(f"{endpoint.replica}: {exc}")
                log.warning("attempt on %s failed: %s", endpoint.replica, exc)
        self._metrics.requests.labels(route.model, "503").inc()
        return no_capacity(f"all {len(tried)} replica(s) of `{route.model}` failed: " + "; ".join(errors))

    async def _attempt(
        self, endpoint: Endpoint, path: str, body: bytes, *, stream: bool, started: float
    ) -> Response:
        model, handed_off = endpoint.model, False
        headers = {REPLICA_HEADER: endpoint.replica}
        self.load.acquire(endpoint.replica)
        try:
            resp = await self._session.post(
                endpoint.url + path,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            )
            try:
                if resp.status >= 500:
                    raise _Failed(f"answered HTTP {resp.status}")
                if stream and resp.status == 200:
                    first = await resp.content.readany()
                    if not first:
                        raise _Failed("closed the stream before sending anything")
                    handed_off = True
                    relay = self._relay(first, resp, endpoint, started)
                    self._metrics.attempts.labels(model, "ok").inc()
                    return EventStreamResponse(relay, headers=headers)
                payload, status, media_type = await resp.read(), resp.status, resp.content_type
            finally:
                if not handed_off:
                    resp.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._metrics.attempts.labels(model, "error").inc()
            raise _Failed(f"{type(exc).__name__}: {exc}") from exc
        except _Failed:
            self._metrics.attempts.labels(model, "error").inc()
            raise
        finally:
            if not handed_off:
                self.load.release(endpoint.replica)
        self._metrics.attempts.labels(model, "ok").inc()
        self._record(model, status, started)
        return Response(payload, status_code=status, media_type=media_type, headers=headers)

    async def _relay(
        self, first: bytes, resp: aiohttp.ClientResponse, endpoint: Endpoint, started: float
    ) -> AsyncGenerator[bytes, None]:
        complete = False
        try:
            yield first
            async for chunk in resp.content.iter_any():
                yield chunk
            complete = True
        except aiohttp.ClientError as exc:
            # Bytes already reached the client: no retry is possible, the stream just ends.
            log.warning("stream from %s broke: %s", endpoint.replica, exc)
        finally:
            # Not complete: the client left (we were cancelled) or upstream broke. Closing
            # rather than releasing drops the connection, which makes the engine stop.
            if complete:
                resp.release()
            else:
                resp.close()
            self.load.release(endpoint.replica)
            self._record(endpoint.model, 200 if complete else 499, started)

    def _record(self, model: str, status: int, started: float) -> None:
        self._metrics.requests.labels(model, str(status)).inc()
        self._metrics.duration.labels(model).observe(time.monotonic() - started)
