"""The gateway: long-lived state (`Gateway`) and the ASGI callable that serves it (`GatewayApp`).

One request, in order: read the body (413 past the limit), parse what the gateway
needs of it (400 naming the field), find the route (404), check the key (401/403),
then the guards (rate limits, budget, priority queue; 429/503), forward with
fallbacks, and finally meter: settle the guards with the real usage, count it in
the metrics, and hand one usage record to the meter, which writes batches off the
request path.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import Sequence
from typing import Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from computenet.api import Provider, Route
from computenet.engines.sizing import AUTO, MaxInFlight, parse_max_in_flight

from .asgi import ASGIApp, Receive, Scope, Send, json_error, send_json
from .auth import AuthFailure, KeyBook
from .forward import Exchange, Forwarder
from .guards import Guards, Refusal
from .metrics import GatewayMetrics
from .openai import BadRequest, parse_request
from .registry import EndpointRegistry
from .resilience import Breakers
from .routes import ConfigProblem, RoutePlan, RouteTable
from .routing.feeds import SignalFeeds
from .routing.hashers import engine_block_hashes
from .routing.kv_index import KVBlockIndex
from .routing.pipeline import RoutingRequest, RoutingState
from .sizing import AutoCapacity
from .tracing import Tracer
from .upstream import UpstreamPool

log = logging.getLogger(__name__)
# One JSON object per request: ids, model, backend, status, timings and token counts. Never
# the prompt, the answer or a key (only the key's public id).
access_log = logging.getLogger("computenet.access")

MAX_BODY_BYTES = 16 * 1024 * 1024
BODY_TIMEOUT_S = 30.0
SCRAPE_INTERVAL_S = 0.1  # engines' /metrics; figures older than 2 s are ignored (routing/signals.py)
WATCH_AFTER_S = 0.25  # a client that hangs up is noticed this long into its request at the latest
COMPLETION_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}


class EndpointSource(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Gateway:
    """Long-lived state of one gateway process. `start` before serving, `close` after."""

    def __init__(
        self,
        registry: EndpointRegistry | None = None,
        *,
        keys: KeyBook | None = None,
        guards: Guards | None = None,
        tracer: Tracer | None = None,
        connect_timeout_s: float = 3.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_in_flight_per_endpoint: MaxInFlight | None = None,
        scrape_interval_s: float = SCRAPE_INTERVAL_S,
        region: str | None = None,
    ) -> None:
        """`region`: where this gateway runs; it prefers replicas there and spills over when they are full."""
        if max_in_flight_per_endpoint is not None:
            max_in_flight_per_endpoint = parse_max_in_flight(
                "max_in_flight_per_endpoint", max_in_flight_per_endpoint
            )
        self.max_in_flight_per_endpoint = max_in_flight_per_endpoint
        self.registry = registry or EndpointRegistry()
        self.region = region
        self.table = RouteTable(self.registry, region=region)
        self.keys = keys or KeyBook()
        self.guards = guards or Guards()
        self.tracer = tracer or Tracer.disabled()
        self.metrics = GatewayMetrics()
        self.breakers = Breakers()
        self.pool = UpstreamPool(connect_timeout_s=connect_timeout_s)
        self.kv_index = KVBlockIndex()
        self.routing = RoutingState(hasher=engine_block_hashes)  # kv: set when a replica publishes events
        self.feeds = SignalFeeds(
            self.registry, self.routing, self.kv_index, scrape_interval_s=scrape_interval_s
        )
        self.metrics.add_routing_feeds(self.feeds)  # scrape errors, KV-event stats, index size
        self.forwarder = Forwarder(self.pool, self.table, self.routing, self.breakers, self.metrics)
        # `auto`: each model's gate sized from its endpoints' KV caches and its typical request
        self.sizing = AutoCapacity(self.routing.board) if max_in_flight_per_endpoint == AUTO else None
        self.max_body_bytes = max_body_bytes
        self.in_flight: dict[str, int] = {}
        self.metrics.add_gauges(
            "computenet_gateway_in_flight_requests",
            "Requests being served, by model.",
            "model",
            lambda: self.in_flight,
        )
        self.metrics.add_gauges(
            "computenet_gateway_breaker_state",
            "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open.",
            "endpoint",
            lambda: {k: float(v) for k, v in self.breakers.states().items()},
        )
        self.guards.register_metrics(self.metrics)
        if self.sizing is not None:
            self.metrics.add_gauges(
                "computenet_gateway_typical_request_tokens",
                "Prompt + completion tokens of a typical finished request (moving average), by model: "
                "what --max-in-flight auto divides each endpoint's KV cache by.",
                "model",
                self.sizing.typical_tokens,
            )
        # Replicas come and go under new names: drop the breakers of those that are gone.
        self.registry.on_change(self._forget_gone)
        # What keeps the registry filled from elsewhere (the control API's endpoints, in the
        # distributed mode): started with the gateway, closed before it.
        self.sources: list[EndpointSource] = []

    def configure(
        self, routes: Sequence[Route] = (), providers: Sequence[Provider] = (), *, strict: bool = True
    ) -> list[ConfigProblem]:
        """See `RouteTable.configure`."""
        problems = self.table.configure(routes, providers, strict=strict)
        self._forget_gone()
        return problems

    def gate_capacity(self, plan: RoutePlan) -> int:
        """Requests `plan`'s model may have in flight: per endpoint that answers it, the fixed
        `--max-in-flight N` or, with `auto`, what its KV cache holds of a typical request."""
        endpoints = tuple(self.forwarder.answering(b) for b in plan.targets)
        if self.sizing is not None:
            return self.sizing.capacity(plan.model, endpoints)
        per_endpoint = self.max_in_flight_per_endpoint
        assert isinstance(per_endpoint, int)
        return per_endpoint * sum(map(len, endpoints))

    def _forget_gone(self) -> None:
        self.breakers.forget(self.table.replicas())

    async def start(self) -> None:
        await self.guards.start()
        await self.feeds.start()
        for source in self.sources:
            await source.start()
        # Everything allocated so far (modules, config) lives as long as the process: keep it
        # out of the collector's full passes, which otherwise walk it every few thousand requests.
        gc.collect()
        gc.freeze()

    async def close(self) -> None:
        for source in self.sources:
            await source.close()
        await self.feeds.close()
        await self.guards.close()
        await self.pool.close()
        await asyncio.to_thread(self.tracer.shutdown)  # blocks while it sends the last spans


class GatewayApp:
    """The ASGI callable. Paths it does not own go to `fallback` (the control API in `up`)."""

    def __init__(self, gateway: Gateway, fallback: ASGIApp | None = None) -> None:
        self.gw = gateway
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path in COMPLETION_PATHS:
            if method != "POST":
                await _method_not_allowed(send, "POST")
                return
            await self._completion(scope, receive, send, path)
        elif path == "/v1/models" and method == "GET":
            await self._models(send)
        elif path == "/metrics" and method == "GET":
            body = generate_latest(self.gw.metrics.registry)
            await send_json(send, 200, body, None, CONTENT_TYPE_LATEST.encode())
        elif path in ("/health", "/healthz") and method == "GET":
            await send_json(send, 200, b'{"status":"ok"}')
        elif self.fallback is not None:
            await self.fallback(scope, receive, send)
        else:
            message = (
                f"no route for {method} {path}; the gateway serves /v1/chat/completions, "
                "/v1/completions, /v1/embeddings and /v1/models"
            )
            await send_json(send, 404, json_error(message, "invalid_request_error", "not_found"))

    async def _completion(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        gw = self.gw
        loop = asyncio.get_running_loop()
        started, started_wall = loop.time(), time.time()
        authorization = priority = traceparent = request_id = session = region = None
        length = -1
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"x-computenet-priority":
                priority = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"x-request-id":
                request_id = value
            elif name == b"x-session-id":
                session = value
            elif name == b"x-computenet-region":
                region = value
        rid = request_id or b"%016x" % random.getrandbits(64)
        out_headers = [(b"x-request-id", rid)]
        model = ""
        try:
            body = await _read_body(receive, length, gw.max_body_bytes)
            parsed = parse_request(path, body)
        except _TooLarge as exc:
            await self._refuse(
                send, out_headers, "", 413, "body_too_large", str(exc), "invalid_request_error"
            )
            return
        except BadRequest as exc:
            await self._refuse(
                send, out_headers, "", 400, "bad_request", str(exc), "invalid_request_error", param=exc.param
            )
            return
        except TimeoutError:
            message = f"the request body did not arrive within {BODY_TIMEOUT_S:g} s"
            await self._refuse(send, out_headers, "", 408, "body_timeout", message, "invalid_request_error")
            return
        model = parsed.model
        plan = gw.table.lookup(model)
        if plan is None:
            message = f"The model `{model}` does not exist; `GET /v1/models` lists the models served here."
            await self._refuse(
                send, out_headers, model, 404, "model_not_found", message, "invalid_request_error"
            )
            return
        key = None
        if gw.keys.enabled:
            found = gw.keys.authenticate(authorization, model)
            if isinstance(found, AuthFailure):
                type_ = "authentication_error" if found.status == 401 else "permission_error"
                await self._refuse(send, out_headers, model, found.status, found.code, found.message, type_)
                return
            key = found
        tenant = key.tenant if key is not None else ""
        ex = Exchange(
            request_id=rid.decode(),
            path=path.encode(),
            body=parsed.body,
            model=model,
            stream=parsed.stream,
            prompt_estimate=parsed.prompt_tokens_estimate,
            headers=[(b"Content-Type", b"application/json"), (b"X-Request-Id", rid)],
            response_headers=out_headers,
            started=started,
            routing=RoutingRequest(
                model=model,
                content=parsed.content,
                session=session.decode("latin-1") if session else parsed.user,
                region=region.decode("latin-1") if region else gw.region,
            ),
        )
        span = gw.tracer.request_span(
            path, traceparent.decode("latin-1") if traceparent else None, {"gen_ai.request.model": model}
        )
        ex.headers.append((b"traceparent", span.traceparent.encode()))
        if gw.guards.gates is not None and gw.max_in_flight_per_endpoint is not None:
            gw.guards.gates.gate(model).capacity = gw.gate_capacity(plan)
        try:
            ticket = await gw.guards.admit(ex, plan, key, parsed.max_tokens, priority)
        except Refusal as refusal:
            span.end(refusal.status)
            out_headers += refusal.headers
            await self._refuse(
                send, out_headers, model, refusal.status, refusal.code, refusal.message, refusal.type_
            )
            return
        gw.in_flight[model] = gw.in_flight.get(model, 0) + 1
        task = asyncio.current_task()
        assert task is not None
        watch = _DisconnectWatch(loop, receive, task)
        try:
            await gw.forwarder.forward(ex, plan, send)
        except asyncio.CancelledError:
            if not watch.fired:
                raise
            task.uncancel()  # our own watch cancelled us: the client went away
            ex.cause, ex.status = "client_gone", 499
        finally:
            watch.stop()
            gw.in_flight[model] -= 1
            latency = loop.time() - started
            span.end(ex.status)
            self._account(ex, tenant, key.key_id if key else "", latency)
            await gw.guards.finish(
                ticket,
                ex,
                tenant=tenant,
                key_id=key.key_id if key else "",
                started_wall=started_wall,
                latency_s=latency,
            )

    def _account(self, ex: Exchange, tenant: str, key_id: str, latency: float) -> None:
        metrics = self.gw.metrics
        up = ex.upstream
        backend = up.backend if up is not None else ""
        series = metrics.series(ex.model, backend, tenant, ex.status)
        series.requests.inc()
        series.duration.observe(latency)
        if ex.ttft_s is not None:
            series.ttft.observe(ex.ttft_s)
            if ex.chunks > 1:
                metrics.inter_token(ex.model, backend, (latency - ex.ttft_s) / (ex.chunks - 1))
        usage = ex.usage
        if usage is not None:
            series.prompt.inc(usage.prompt_tokens)
            series.cached.inc(usage.cached_tokens)
            series.completion.inc(usage.completion_tokens)
            if self.gw.sizing is not None and ex.status == 200:
                self.gw.sizing.observe(ex.model, usage.prompt_tokens + usage.completion_tokens)
        if ex.cause:
            metrics.error(ex.model, ex.cause)
        if access_log.isEnabledFor(logging.INFO):
            _log_access(
                {
                    "request_id": ex.request_id,
                    "path": ex.path.decode(),
                    "model": ex.model,
                    "tenant": tenant,
                    "key_id": key_id,
                    "backend": backend,
                    "endpoint": up.endpoint if up is not None else "",
                    "prefill_endpoint": ex.prefill,
                    "status": ex.status,
                    "cause": ex.cause,
                    "attempts": ex.attempts,
                    "stream": ex.stream,
                    "latency_ms": round(latency * 1000, 3),
                    "ttft_ms": round(ex.ttft_s * 1000, 3) if ex.ttft_s is not None else None,
                    "prompt_tokens": usage.prompt_tokens if usage else 0,
                    "completion_tokens": usage.completion_tokens if usage else 0,
                }
            )

    async def _refuse(
        self,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        model: str,
        status: int,
        code: str,
        message: str,
        type_: str,
        param: str | None = None,
    ) -> None:
        metrics = self.gw.metrics
        metrics.series(model, "", "", status).requests.inc()
        metrics.error(model, code)
        if access_log.isEnabledFor(logging.INFO):
            request_id = headers[0][1].decode("latin-1") if headers else ""
            _log_access({"request_id": request_id, "model": model, "status": status, "cause": code})
        await send_json(send, status, json_error(message, type_, code, param), headers)

    async def _models(self, send: Send) -> None:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "computenet"}
            for m in self.gw.table.models()
        ]
        await send_json(send, 200, orjson.dumps({"object": "list", "data": data}))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gw.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gw.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _log_access(fields: dict[str, object]) -> None:
    access_log.info(orjson.dumps({"ts": time.time(), **fields}).decode())


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, length: int, limit: int) -> bytes:
    if length > limit:
        raise _TooLarge(f"request body is {length} bytes; the limit is {limit}")
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts, size = [body], len(body)
    async with asyncio.timeout(BODY_TIMEOUT_S):
        while message.get("more_body"):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge(f"request body is over the limit of {limit} bytes")
            parts.append(chunk)
    return b"".join(parts)


class _DisconnectWatch:
    """Cancels a request's task when its client goes away, so the upstream request stops too.

    Watching costs a task per request, more than the rest of a short request's bookkeeping,
    and most requests are answered long before anyone would hang up: so the watching task
    starts only after `WATCH_AFTER_S`. A client that left earlier is noticed then (uvicorn's
    `receive` answers "disconnect" at once), which bounds the engine's wasted work.
    """

    __slots__ = ("_receive", "_task", "_timer", "_watcher", "fired")

    def __init__(self, loop: asyncio.AbstractEventLoop, receive: Receive, task: asyncio.Task[object]) -> None:
        self._receive, self._task = receive, task
        self._watcher: asyncio.Task[None] | None = None
        self.fired = False
        self._timer = loop.call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        message = await self._receive()
        # uvicorn also reports a "disconnect" once the response is complete. By then the
        # handler is past its last await and stops this watch before it can run again,
        # so a disconnect seen here while the handler runs is a real one.
        if message["type"] == "http.disconnect" and not self._task.done():
            self.fired = True
            self._task.cancel()

    def stop(self) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


async def _method_not_allowed(send: Send, allowed: str) -> None:
    body = json_error(f"use {allowed} on this path", "invalid_request_error", "method_not_allowed")
    await send_json(send, 405, body, [(b"allow", allowed.encode())])
