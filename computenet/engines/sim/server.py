"""The sim's OpenAI-compatible HTTP app: thin routing over `SimEngine`.

`create_app` wires one engine, one metrics registry and the routes together;
nothing is global, so tests can run several sims side by side in one process.
Besides OpenAI's paths it serves vLLM's `/tokenize`, `/detokenize` and
`/reset_prefix_cache`, and `/sim/stats`: the driver's planned vs actual timing.
The lifespan binds the KV-event socket and stops the driver; without a lifespan
(an in-process test client) the driver still starts and stops with the traffic.
With `--kv-transfer-config` a completion request may carry vLLM's
`kv_transfer_params` (disaggregated prefill, see `transfer.py`): a prefill answers
with where its KV waits, a decode pulls that KV instead of computing the prompt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..streaming import DeferredJSONResponse, EventStreamResponse
from .config import SimConfig
from .engine import ContextLengthExceeded, Generation, SimEngine
from .output import ChatShape, Envelope, Shape, TextShape, collect, sse_events
from .requests import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    GenerationRequest,
    RequestError,
    TokenizeRequest,
    parse_request,
)
from .tokens import decode
from .transfer import RemoteDecode, RemotePrefill, parse_transfer

OWNED_BY = "computenet-sim"


class _SimApi:
    def __init__(self, config: SimConfig, engine: SimEngine) -> None:
        self._config = config
        self._engine = engine

    async def chat_completions(self, request: Request) -> Response:
        body = parse_request(ChatCompletionRequest, await request.body())
        return self._generate(ChatShape(), body)

    async def completions(self, request: Request) -> Response:
        body = parse_request(CompletionRequest, await request.body())
        return self._generate(TextShape(), body)

    async def tokenize(self, request: Request) -> Response:
        body = parse_request(TokenizeRequest, await request.body())
        self._check_model(body.model)
        tokens = body.token_ids()
        max_len = self._engine.max_model_len
        return JSONResponse(
            {"count": len(tokens), "max_model_len": max_len, "tokens": tokens, "token_strs": None}
        )

    async def detokenize(self, request: Request) -> Response:
        body = parse_request(DetokenizeRequest, await request.body())
        self._check_model(body.model)
        return JSONResponse({"prompt": decode(body.tokens)})

    async def reset_prefix_cache(self, request: Request) -> Response:
        return JSONResponse({"reset": self._engine.reset_prefix_cache()})

    async def models(self, request: Request) -> Response:
        card = {"id": self._config.model, "object": "model", "created": 0, "owned_by": OWNED_BY}
        card["max_model_len"] = self._engine.max_model_len
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self._engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self._engine.stats_snapshot())

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self._config.model:
            message = f"The model `{model}` does not exist."
            raise RequestError(404, message, code="model_not_found", param="model")

    def _generate(self, shape: Shape, body: GenerationRequest) -> Response:
        self._check_model(body.model)
        transfer = parse_transfer(body.kv_transfer_params, self._config.kv_transfer, stream=body.stream)
        token_ids = body.prompt_token_ids()
        try:
            plan = self._engine.plan(len(token_ids), body.output_limit(), body.min_tokens)
        except ContextLengthExceeded as exc:
            raise RequestError(400, str(exc), code="context_length_exceeded", param="messages") from exc
        if isinstance(transfer, RemotePrefill):
            transfer.check_covers(len(token_ids), self._engine.core.kv.block_size)
        envelope = Envelope.new(shape.id_prefix, self._config.model, usage_in_chunks=body.include_usage)
        generation = self._engine.generate(plan, envelope.id, token_ids, transfer)
        if body.stream:
            return EventStreamResponse(sse_events(shape, envelope, generation, body.include_usage))
        produce = partial(collect, shape, envelope, generation)
        if isinstance(transfer, RemoteDecode):
            return DeferredJSONResponse(partial(self._prefilled, produce, generation))
        return DeferredJSONResponse(produce)

    async def _prefilled(
        self, produce: Callable[[], Awaitable[dict[str, Any]]], generation: Generation
    ) -> dict[str, Any]:
        """A prefill's answer: the first token, and where a decode replica finds the prompt's KV."""
        body = await produce()
        return body | {"kv_transfer_params": self._engine.transfer_params(generation)}


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSONResponse(exc.body(), status_code=exc.status_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in OpenAI's error shape too."""
    assert isinstance(exc, HTTPException)
    error = RequestError(exc.status_code, exc.detail, code=None)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


def create_app(config: SimConfig) -> Starlette:
    """A sim server for one served model; ValueError if the config describes no usable replica."""
    engine = SimEngine(config)
    api = _SimApi(config, engine)
    routes = [
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/tokenize", api.tokenize, methods=["POST"]),
        Route("/detokenize", api.detokenize, methods=["POST"]),
        Route("/reset_prefix_cache", api.reset_prefix_cache, methods=["POST"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/sim/stats", api.stats, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.close()

    handlers = {RequestError: _request_error, HTTPException: _http_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.engine = engine
    return app
