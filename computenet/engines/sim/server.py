"""The sim's OpenAI-compatible HTTP app: thin routing over `SimEngine`.

`create_app` wires one engine, one metrics registry and the routes together;
nothing is global, so tests can run several sims side by side in one process.
"""

from __future__ import annotations

from functools import partial

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..streaming import DeferredJSONResponse, EventStreamResponse
from .config import SimConfig
from .engine import ContextLengthExceeded, SimEngine, plan_generation
from .output import ChatShape, Envelope, Shape, TextShape, collect, sse_events
from .requests import ChatCompletionRequest, CompletionRequest, GenerationRequest, RequestError, parse_request

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

    async def models(self, request: Request) -> Response:
        card = {"id": self._config.model, "object": "model", "created": 0, "owned_by": OWNED_BY}
        card["max_model_len"] = self._config.max_model_len
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self._engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _generate(self, shape: Shape, body: GenerationRequest) -> Response:
        if body.model != self._config.model:
            message = f"The model `{body.model}` does not exist."
            raise RequestError(404, message, code="model_not_found", param="model")
        try:
            plan = plan_generation(self._config, body.prompt_tokens(), body.output_limit())
        except ContextLengthExceeded as exc:
            raise RequestError(400, str(exc), code="context_length_exceeded", param="messages") from exc
        envelope = Envelope.new(shape.id_prefix, self._config.model, usage_in_chunks=body.include_usage)
        pieces = self._engine.stream(plan)
        if body.stream:
            return EventStreamResponse(sse_events(shape, envelope, plan, pieces, body.include_usage))
        return DeferredJSONResponse(partial(collect, shape, envelope, plan, pieces))


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSONResponse(exc.body(), status_code=exc.status_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in OpenAI's error shape too."""
    assert isinstance(exc, HTTPException)
    error = RequestError(exc.status_code, exc.detail, code=None)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


def create_app(config: SimConfig) -> Starlette:
    """A sim server for one served model."""
    engine = SimEngine(config)
    api = _SimApi(config, engine)
    routes = [
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
    ]
    handlers = {RequestError: _request_error, HTTPException: _http_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.engine = engine
    return app
