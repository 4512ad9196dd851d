"""Send one request to its route's backends, falling back while that is safe, and relay the answer.

Safe means: no byte has reached the client. Until then a connect error, a timeout,
a 429 or 5xx answer, a stream that ends before its first chunk, or a backend with
no ready replica all move on — to another replica of the same target, then to the
other targets (weighted), then to the fallbacks in order — within the route's retry
budget and deadline. After the first byte an upstream failure ends the stream with
an OpenAI-shaped error event, because a client cannot un-receive half an answer.

A deployment of prefill and decode replicas (no router of its own) runs each request
in two legs (`disagg.py`): the prefill leg once, then the decode leg as the attempt
above, whose retries reuse the prefill's `kv_transfer_params`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

import orjson

from computenet.api import PolicySpec, Price

from .asgi import Send, json_error, send_json, start_stream
from .disagg import Prefilled, PrefillStage, leg_body
from .metrics import GatewayMetrics
from .openai import StreamTally, Usage, complete_json, usage_chunk
from .registry import Published, Upstream
from .resilience import Breakers, backoff_delay, parse_retry_after
from .routes import Backend, RoutePlan, RouteTable
from .routing.disagg import PairPolicy, pair_policy
from .routing.hashers import TOKENIZED_BY_ENGINE
from .routing.pipeline import RoutingPolicy, RoutingRequest, RoutingState
from .tokenize import EngineTokenizer
from .upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024
DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class Exchange:
    """One client request on its way through: what it asks and, afterwards, what happened."""

    request_id: str
    path: bytes
    body: bytes
    model: str
    stream: bool
    prompt_estimate: int
    headers: list[tuple[bytes, bytes]]  # sent upstream (content type, request id, traceparent)
    response_headers: list[tuple[bytes, bytes]]  # sent to the client (request id, rate limits)
    started: float  # loop time
    routing: RoutingRequest
    status: int = 0
    upstream: Upstream | None = None
    price: Price | None = None  # of the backend that answered
    usage: Usage | None = None
    ttft_s: float | None = None
    chunks: int = 0
    cause: str = ""  # why it failed, for metrics: "upstream_5xx", "timeout", "client_gone", ...
    attempts: int = 0
    prefill: str | None = None  # the replica that prefilled a disaggregated request


@dataclass(frozen=True, slots=True)
class _Pair:
    """A disaggregated deployment as one request sees it."""

    published: Published
    policy: PairPolicy

    @property
    def decoders(self) -> tuple[Upstream, ...]:
        """Where the request is answered; with no decode replica ready, a prefill replica serves it whole."""
        return self.published.decode or self.published.prefill

    @property
    def prefillers(self) -> tuple[Upstream, ...]:
        return self.published.prefill if self.published.decode else ()


NO_REPLICA = "no ready replica"
SATURATED = "every replica saturated"


class _Saturated(Exception):
    """The routing policy's filters turned every remaining replica of a backend away."""


class _Retryable(Exception):
    def __init__(self, cause: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.retry_after_s = retry_after_s


class Forwarder:
    def __init__(
        self,
        pool: UpstreamPool,
        table: RouteTable,
        state: RoutingState,
        breakers: Breakers,
        metrics: GatewayMetrics,
        rng: random.Random | None = None,
    ) -> None:
        self.metrics = metrics
        self.pool = pool
        self.table = table
        self.state = state
        self.breakers = breakers
        self._rng = rng or random.Random()
        self._prefill = PrefillStage(pool, state, breakers, metrics)
        self.tokenizer = EngineTokenizer(pool, metrics)
        self._pairs: dict[str, tuple[PolicySpec | str, PairPolicy]] = {}  # by deployment, with its policy

    async def forward(self, ex: Exchange, plan: RoutePlan, send: Send) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(ex.started + plan.timeout_s):
                await self._attempts(ex, plan, send)
        except TimeoutError:
            if ex.status == 0:  # nothing sent yet: the client gets a clean 504
                ex.status, ex.cause = 504, "timeout"
                message = f"`{ex.model}` did not answer within the route's {plan.timeout_s:g} s deadline"
                await send_json(
                    send, 504, json_error(message, "timeout", "deadline_exceeded"), ex.response_headers
                )
            else:
                ex.cause = "timeout"
                await _end_stream_with_error(
                    send, "the route's deadline passed mid-stream", "deadline_exceeded"
                )
        finally:
            if ex.ttft_s is None and ex.status == 200 and not ex.stream:
                ex.ttft_s = loop.time() - ex.started

    async def _attempts(self, ex: Exchange, plan: RoutePlan, send: Send) -> None:
        policy = plan.pipeline
        budget = 1 + plan.retries + len(plan.fallbacks)
        primaries = len(plan.targets)
        tried: set[str] = set()
        errors: list[str] = []
        retry_afters: list[float] = []
        all_429 = True
        backends = plan.order(self._rng) if primaries > 1 or plan.fallbacks else list(plan.targets)
        for backend in backends:
            pair = self._paired(backend)
            body: bytes | None = None  # a disaggregated request's decode leg, once its prefill leg ran
            ex.routing.token_ids = None  # another backend may serve another model, with another tokenizer
            if pair is not None:
                await self._tokenize(ex.routing, backend, pair.policy.prefill, pair.prefillers)
            else:
                await self._tokenize(ex.routing, backend, policy, self.table.candidates(backend))
            while ex.attempts < budget:
                candidates = pair.decoders if pair is not None else self.table.candidates(backend)
                if pair is not None and body is None and any(u.replica not in tried for u in candidates):
                    body = await self._prefill_leg(ex, backend, pair)
                try:
                    chooser = pair.policy.decode if pair is not None else policy
                    upstream = self._choose(ex.routing, backend, chooser, tried, candidates)
                except _Saturated:
                    errors.append(f"{backend.label}: {SATURATED}")
                    all_429 = False
                    break
                if upstream is None:
                    if not tried.intersection(u.replica for u in candidates):
                        errors.append(f"{backend.label}: {NO_REPLICA}")
                        all_429 = False
                    break
                tried.add(upstream.replica)
                if ex.attempts >= 2:  # the first failover is immediate; later ones back off
                    await asyncio.sleep(backoff_delay(ex.attempts - 1))
                ex.attempts += 1
                try:
                    await self._attempt(ex, backend, upstream, send, body)
                    return
                except _Retryable as exc:
                    errors.append(f"{upstream.replica}: {exc}")
                    all_429 = all_429 and exc.cause == "upstream_429"
                    if exc.retry_after_s is not None:
                        retry_afters.append(exc.retry_after_s)
                    log.warning("request %s: attempt on %s failed: %s", ex.request_id, upstream.replica, exc)
                if backend.upstream is not None:  # a provider model is one upstream: on to the next backend
                    break
        await self._give_up(ex, send, errors, all_429 and bool(retry_afters or errors), retry_afters)

    async def _tokenize(
        self,
        request: RoutingRequest,
        backend: Backend,
        policy: RoutingPolicy,
        candidates: tuple[Upstream, ...],
    ) -> None:
        """Ask the engine for the prompt's token ids when precise routing needs them and has a
        choice to make (see tokenize.py); for the sim, and without KV events, nothing to do."""
        if (
            self.state.kv is None
            or len(candidates) < 2
            or candidates[0].engine not in TOKENIZED_BY_ENGINE
            or not policy.reads_kv
            or not any(u.kv_events for u in candidates)
        ):
            return
        request.adapter = request.model if self.state.board.serves_adapter(request.model) else None
        await self.tokenizer.fill(request, candidates, backend.label)

    def answering(self, backend: Backend) -> tuple[Upstream, ...]:
        """Replicas that answer requests for `backend` (a disaggregated deployment: its decode replicas;
        a provider model: its one upstream): what a model's admission gate is sized by."""
        pair = self._paired(backend)
        return pair.decoders if pair is not None else self.table.candidates(backend)

    def _paired(self, backend: Backend) -> _Pair | None:
        """The deployment behind `backend` when the gateway pairs its prefill and decode replicas."""
        if backend.deployment is None:
            return None
        published = self.table.registry.deployment(backend.deployment)
        if published is None or not published.disaggregated:
            return None
        cached = self._pairs.get(backend.deployment)
        if cached is None or cached[0] != published.policy:
            cached = self._pairs[backend.deployment] = (published.policy, pair_policy(published.policy))
        return _Pair(published, cached[1])

    async def _prefill_leg(self, ex: Exchange, backend: Backend, pair: _Pair) -> bytes:
        """Run the prefill leg; the decode leg's body (without kv_transfer_params when it failed)."""
        payload = orjson.loads(ex.body)
        outcome = Prefilled(None, why="the deployment has no ready prefill replica")
        if pair.prefillers:
            outcome = await self._prefill.run(
                request_id=ex.request_id,
                path=ex.path,
                payload=payload,
                headers=ex.headers,
                routing=ex.routing,
                label=backend.label,
                candidates=pair.prefillers,
                policy=pair.policy.prefill,
            )
        if outcome.replica is not None:
            ex.prefill = outcome.replica
            ex.response_headers.append((b"x-computenet-prefill-replica", outcome.replica.encode()))
        return leg_body(payload, pair.decoders[0].model, outcome.params)

    def _choose(
        self,
        request: RoutingRequest,
        backend: Backend,
        policy: RoutingPolicy,
        tried: set[str],
        candidates: tuple[Upstream, ...],
    ) -> Upstream | None:
        """The replica to try next among `candidates`; None when none is left. Raises _Saturated when
        the policy's filters turned every remaining replica away."""
        if tried:
            candidates = tuple(u for u in candidates if u.replica not in tried)
        if backend.deployment is None:  # a provider model: its upstreams in order, nothing to score
            return self.breakers.first_allowed(candidates, lambda left: left[0], tried)

        def pick(left: tuple[Upstream, ...]) -> Upstream:
            picked = policy.pick(request, left, self.state)
            if picked is None:
                raise _Saturated
            return picked

        upstream = self.breakers.first_allowed(candidates, pick, tried)
        if upstream is not None:
            policy.routed(request, upstream, self.state)
        return upstream

    async def _attempt(
        self, ex: Exchange, backend: Backend, up: Upstream, send: Send, body: bytes | None = None
    ) -> None:
        """One request to `up`: the client's body, or `body` when given (a decode leg's)."""
        breaker = self.breakers.get(up.replica)
        if body is None:
            body = ex.body if up.model is None or up.model == ex.model else _with_model(ex.body, up.model)
        headers = ex.headers + list(up.headers) if up.headers else ex.headers
        self.state.board.acquire(up.replica)
        resp: UpstreamResponse | None = None
        verdict: bool | None = None  # True success, False failure, None: neither (client gone)
        try:
            try:
                resp = await self.pool.request(up.origin, b"POST", ex.path, body, headers)
            except UpstreamTimeout as exc:
                verdict = False
                raise _Retryable("timeout", str(exc)) from exc
            except UpstreamError as exc:
                verdict = False
                raise _Retryable("connect", str(exc)) from exc
            status = resp.status
            # 401/403 from a backend is the gateway's own credential being refused (clients'
            # keys never go upstream): a misconfigured backend, so try the next one.
            if status == 429 or status >= 500 or status in (401, 403):
                retry_after = parse_retry_after(resp.header(b"retry-after"))
                detail = await resp.read_at_most(MAX_ERROR_BODY)
                verdict = False
                breaker.failure(retry_after if status in (429, 503) else None)
                cause = {429: "upstream_429", 401: "upstream_auth", 403: "upstream_auth"}.get(
                    status, "upstream_5xx"
                )
                raise _Retryable(cause, f"answered HTTP {status}: {detail[:200]!r}", retry_after)
            ex.upstream, ex.price = up, backend.price
            ex.response_headers.append((b"x-computenet-replica", up.replica.encode()))
            if not ex.stream or status != 200:
                payload = await resp.read()
                if status == 200:
                    payload, ex.usage = complete_json(payload, ex.prompt_estimate)
                verdict = True
                ex.status = status
                content_type = resp.header(b"content-type") or b"application/json"
                await send_json(send, status, payload, ex.response_headers, content_type)
                return
            await self._relay(ex, resp, send)
            verdict = ex.cause == ""
        except UpstreamError as exc:  # after the first byte: the stream is cut short
            verdict = False
            ex.cause = "upstream_broke"
            log.warning("request %s: stream from %s broke: %s", ex.request_id, up.replica, exc)
            await _end_stream_with_error(send, f"the backend failed mid-stream: {exc}", "upstream_error")
        finally:
            self.state.board.release(up.replica)
            self._prefilled(ex, up.replica)
            if resp is not None:
                if verdict is True and ex.cause == "":
                    resp.release()
                else:
                    resp.close()  # unread body or client gone: dropping the connection stops the engine
            self.metrics.attempt(backend.label, "ok" if verdict is not False else "error")
            if verdict is True:
                breaker.success()
            elif verdict is False and (resp is None or ex.status):
                breaker.failure()  # (429 and 5xx answers were counted above, with their Retry-After)
            else:
                breaker.release_probe()

    def _prefilled(self, ex: Exchange, replica: str) -> None:
        """The prompt's first token came back, or never will: its prefill is no longer queued on
        `replica` (the `prefill-load` scorer charged it there). A non-streamed answer arrives whole,
        so its prefill counts until the end: an overestimate, on the safe side."""
        if ex.routing.prefill_tokens:
            self.state.board.end_prefill(replica, ex.routing.prefill_tokens)
            ex.routing.prefill_tokens = 0

    async def _relay(self, ex: Exchange, resp: UpstreamResponse, send: Send) -> None:
        loop = asyncio.get_running_loop()
        first = await resp.next_chunk()
        if first is None:
            raise _Retryable("upstream_5xx", "closed the stream before sending anything")
        if ex.upstream is not None:
            self._prefilled(ex, ex.upstream.replica)
        ex.status = 200
        ex.ttft_s = loop.time() - ex.started
        await start_stream(send, ex.response_headers)
        tally = StreamTally()
        chunk: bytes | None = first
        while chunk is not None:
            tally.feed(chunk)
            if tally.done and tally.usage is None and chunk.endswith(DONE):
                # The backend sent no usage: hold [DONE] back to put our count before it.
                ex.usage = tally.final_usage(ex.prompt_estimate)
                chunk = chunk[: -len(DONE)] + usage_chunk(ex.model, ex.usage) + DONE
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await resp.next_chunk()
        ex.chunks = tally.chunks
        if ex.usage is None:
            ex.usage = tally.final_usage(ex.prompt_estimate)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _give_up(
        self, ex: Exchange, send: Send, errors: list[str], rate_limited: bool, retry_afters: list[float]
    ) -> None:
        tried = "; ".join(errors) or "no backend could be tried"
        if rate_limited:
            ex.status, ex.cause = 429, "upstream_429"
            wait = max(1, round(min(retry_afters))) if retry_afters else 1
            ex.response_headers.append((b"retry-after", str(wait).encode()))
            body = json_error(
                f"every backend of `{ex.model}` is rate limited: {tried}", "rate_limit_error", "rate_limited"
            )
        elif all(e.endswith((NO_REPLICA, SATURATED)) for e in errors):
            saturated = any(e.endswith(SATURATED) for e in errors)
            ex.status, ex.cause = 503, "saturated" if saturated else "no_capacity"
            ex.response_headers.append((b"retry-after", b"1"))
            message = (
                f"every replica of `{ex.model}` is saturated (its queue or KV cache is past the routing "
                "policy's saturation filter); retry shortly"
                if saturated
                else f"`{ex.model}` has no ready replica yet; retry shortly or check "
                "`computenet get deployments`"
            )
            body = json_error(message, "service_unavailable", "no_capacity")
        else:
            ex.status, ex.cause = 502, ex.cause or "upstream_failed"
            body = json_error(
                f"every backend of `{ex.model}` failed: {tried}", "upstream_error", "bad_gateway"
            )
        await send_json(send, ex.status, body, ex.response_headers)


async def _end_stream_with_error(send: Send, message: str, code: str) -> None:
    event = b"data: " + json_error(message, "upstream_error", code) + b"\n\n"
    try:
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except Exception:  # the client may be gone too; nothing left to tell it
        log.debug("could not send the stream's error event", exc_info=True)


def _with_model(body: bytes, model: str) -> bytes:
    payload = orjson.loads(body)
    payload["model"] = model
    return orjson.dumps(payload)
