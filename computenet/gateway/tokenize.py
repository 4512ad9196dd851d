"""A prompt's token ids from the engine that will serve it, for precise prefix routing on vLLM.

vLLM keys its KV blocks by token ids, and the ids depend on the model's tokenizer and
chat template, neither of which the gateway holds (and which can change with a model
revision the gateway never sees). So, as vllm-router's prefix-aware policy does, the
gateway asks a replica: `POST /tokenize` with the request's `messages` (vLLM renders
the chat template and adds the generation prompt, as for a chat completion) or its
`prompt`. The ids are then hashed like the re-keyed KV events (`routing/rekey.py`).

That is one more round trip before the first token, a few milliseconds for a long
prompt on a busy API server, so it runs only when it can pay: the route's policy reads
the KV index (precise-prefix, prefill-load), some replica of the candidates' engine
publishes KV events, and the candidates are more than one. The replicas are asked in
turn. A failure, or no answer within `TOKENIZE_TIMEOUT_S`, costs the request its
precise score, not its answer: it is routed on load, and the outcome is counted in
`computenet_gateway_engine_tokenize_total`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from .metrics import GatewayMetrics
from .registry import Upstream
from .routing.hashers import prompt_form
from .routing.pipeline import RoutingRequest
from .upstream import UpstreamError, UpstreamPool

log = logging.getLogger(__name__)

TOKENIZE_TIMEOUT_S = 0.25
MAX_TOKENIZE_BODY = 16 * 1024 * 1024  # the ids of a very long prompt, with room; anything bigger is not one


def tokenize_body(content: Any, model: str) -> bytes | None:
    """vLLM's /tokenize request for a prompt as the client sent it; None when there is nothing to
    ask (no prompt, a batch of several, or token ids already)."""
    form = prompt_form(content)
    if form is None or form[0] == "ids":
        return None
    kind, value = form
    if kind == "chat":
        return orjson.dumps({"model": model, "messages": value, "add_generation_prompt": True})
    return orjson.dumps({"model": model, "prompt": value})


class EngineTokenizer:
    """Fills `RoutingRequest.token_ids` from a candidate replica's `/tokenize`."""

    def __init__(
        self, pool: UpstreamPool, metrics: GatewayMetrics, *, timeout_s: float = TOKENIZE_TIMEOUT_S
    ) -> None:
        self.pool, self.metrics, self.timeout_s = pool, metrics, timeout_s
        self._turn = 0

    async def fill(self, request: RoutingRequest, candidates: Sequence[Upstream], backend: str) -> None:
        """Set the request's token ids if a replica tokenizes its prompt in time; leave them None if not."""
        form = prompt_form(request.content)
        if form is not None and form[0] == "ids":  # sent as token ids: nothing to ask an engine
            request.token_ids = form[1]
            return
        up = candidates[self._turn % len(candidates)]
        self._turn += 1
        body = tokenize_body(request.content, request.adapter or up.model or request.model)
        if body is None:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                request.token_ids = await self._ask(up, body)
        except (TimeoutError, UpstreamError, ValueError) as exc:
            log.debug("tokenize on %s failed, routing on load: %s", up.replica, exc)
            self.metrics.tokenized(backend, "error")
            return
        self.metrics.tokenized(backend, "ok")

    async def _ask(self, up: Upstream, body: bytes) -> list[int]:
        headers = ((b"Content-Type", b"application/json"),)
        resp = await self.pool.request(up.origin, b"POST", b"/tokenize", body, headers)
        try:
            raw = await resp.read_at_most(MAX_TOKENIZE_BODY)
        finally:
            resp.release()
        if resp.status != 200:
            raise ValueError(f"/tokenize answered {resp.status}: {raw[:200]!r}")
        answer = orjson.loads(raw)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
            raise ValueError("/tokenize answered without a `tokens` array of integers")
        return tokens
