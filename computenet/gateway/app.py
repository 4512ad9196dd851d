"""The gateway's ASGI app: OpenAI-compatible paths in front of the registry's endpoints.

`Gateway` owns what lives as long as the process (HTTP client session, policies,
metrics); `create_gateway_app` wires it into Starlette routes. The request path is
kept short: parse just enough JSON to read `model` and `stream`, look up the route,
forward the original bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import bad_request, model_not_found, no_capacity
from .metrics import GatewayMetrics
from .policies import POLICIES, RoutingPolicy
from .proxy import Forwarder, ProxySettings
from .registry import EndpointRegistry

MAX_BODY_BYTES = 16 * 1024 * 1024


class Gateway:
    """Long-lived state of one gateway. `start` before serving, `close` after."""

    def __init__(self, registry: EndpointRegistry, settings: ProxySettings | None = None) -> None:
        self.registry = registry
        self.settings = settings or ProxySettings()
        self.metrics = GatewayMetrics()
        self.policies: Mapping[str, RoutingPolicy] = {name: make() for name, make in POLICIES.items()}
        self._session: aiohttp.ClientSession | None = None
        self._forwarder: Forwarder | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self._forwarder = Forwarder(self._session, self.policies, self.metrics, self.settings)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def forwarder(self) -> Forwarder:
        if self._forwarder is None:
            raise RuntimeError("Gateway.start() was not awaited")
        return self._forwarder


def create_gateway_app(gateway: Gateway) -> Starlette:
    async def chat_completions(request: Request) -> Response:
        return await _proxy(gateway, request, "/v1/chat/completions")

    async def completions(request: Request) -> Response:
        return await _proxy(gateway, request, "/v1/completions")

    async def models(_request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "computenet"}
            for m in gateway.registry.models()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


async def _proxy(gateway: Gateway, request: Request, path: str) -> Response:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return bad_request(f"request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    payload, problem = _parse(body)
    if problem:
        return bad_request(problem)
    model = payload["model"]
    route = gateway.registry.lookup(model)
    if route is None:
        gateway.metrics.requests.labels("", "404").inc()
        return model_not_found(model)
    if not route.endpoints:
        gateway.metrics.requests.labels(model, "503").inc()
        return no_capacity(
            f"`{model}` has no ready replica yet; retry shortly or check `computenet get deployments`"
        )
    return await gateway.forwarder.forward(path, body, route, stream=payload.get("stream") is True)


def _parse(body: bytes) -> tuple[dict[str, Any], str | None]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        return {}, f"request body is not valid JSON: {exc}"
    if not isinstance(payload, dict):
        return {}, "request body must be a JSON object"
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        return {}, "`model` is required: the name of a model from `GET /v1/models`"
    return payload, None
