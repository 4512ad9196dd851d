"""The prefill half of a disaggregated request, in vLLM's protocol: the gateway is the PD proxy.

A deployment with `prefill` and `decode` roles and no `router` of its own is served in
two legs, as vLLM's disaggregated-prefill proxies and llm-d's sidecar do:

1. **prefill**: the request goes to a prefill replica (chosen by prefix hits and queue,
   see `routing/disagg.py`) with `max_tokens: 1`, `stream: false` and
   `kv_transfer_params: {"do_remote_decode": true, ...}`; the replica computes the
   prompt and answers with `kv_transfer_params` saying where its KV waits;
2. **decode**: the client's own request goes to a decode replica (chosen by KV room
   and in-flight requests) with those `kv_transfer_params`; the replica pulls the
   KV instead of computing the prompt, and its answer, streamed or not, is the
   client's. The forwarder runs this leg like any attempt, with its retries.

A failed prefill is tried once more on another prefill replica when the failure says
nothing about the request (no answer, a timeout, 429, 5xx); after that, or after an
answer that would be the same anywhere (a 4xx, or no `kv_transfer_params` because the
replica runs without a KV connector), the decode replica gets the request without
`kv_transfer_params` and computes the prompt itself. Slower, and it competes with that
replica's decodes, but the model keeps answering while its prefill tier is down; a
client never sees an error that only the prefill tier had. A client's own
`kv_transfer_params` never reach a replica: they would point a decode engine at
blocks of the client's choosing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .metrics import GatewayMetrics
from .registry import Upstream
from .resilience import Breakers, parse_retry_after
from .routing.pipeline import RoutingPolicy, RoutingRequest, RoutingState
from .upstream import UpstreamError, UpstreamPool

log = logging.getLogger(__name__)

PREFILL_ATTEMPTS = 2  # replicas tried for the prefill leg before the decode replica prefills itself
PREFILL_PATHS = frozenset({b"/v1/chat/completions", b"/v1/completions"})
MAX_PREFILL_BODY = 4 * 1024 * 1024  # a one-token answer and its block ids; anything bigger is not one
# What vLLM's disagg proxies send on the prefill leg; the replica fills in the rest in its answer.
PREFILL_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


@dataclass(frozen=True, slots=True)
class Prefilled:
    """The prefill leg's outcome: the decode leg's `kv_transfer_params`, or why there are none."""

    params: dict[str, Any] | None
    replica: str | None = None  # the prefill replica that holds the prompt's KV
    why: str = ""  # when `params` is None: why the decode replica computes the prompt itself


class _Failed(Exception):
    """This prefill replica failed; another one may not."""


class _Refused(Exception):
    """An answer every prefill replica would give: go straight to decode-only."""


def leg_body(payload: dict[str, Any], model: str | None, params: dict[str, Any] | None) -> bytes:
    """The client's request for a replica: its model's name, and our `kv_transfer_params` or none."""
    leg = dict(payload)
    if model is not None:
        leg["model"] = model
    leg.pop("kv_transfer_params", None)
    if params is not None:
        leg["kv_transfer_params"] = params
    return orjson.dumps(leg)


def prefill_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The prefill leg: one token, not streamed, no min_tokens (one token cannot meet it), as vLLM has it."""
    leg = {
        k: v for k, v in payload.items() if k not in ("stream_options", "min_tokens", "min_completion_tokens")
    }
    leg["stream"] = False
    leg["max_tokens"] = 1
    if "max_completion_tokens" in leg:
        leg["max_completion_tokens"] = 1
    return leg


class PrefillStage:
    """Runs the prefill leg on the best prefill replica, and on one more if that one fails."""

    def __init__(
        self, pool: UpstreamPool, state: RoutingState, breakers: Breakers, metrics: GatewayMetrics
    ) -> None:
        self.pool, self.state, self.breakers, self.metrics = pool, state, breakers, metrics

    async def run(
        self,
        *,
        request_id: str,
        path: bytes,
        payload: dict[str, Any],
        headers: Sequence[tuple[bytes, bytes]],
        routing: RoutingRequest,
        label: str,
        candidates: tuple[Upstream, ...],
        policy: RoutingPolicy,
    ) -> Prefilled:
        if path not in PREFILL_PATHS:
            return Prefilled(None, why=f"{path.decode()} has no prefill phase")
        tried: set[str] = set()
        reasons: list[str] = []
        for _ in range(PREFILL_ATTEMPTS):
            remaining = tuple(u for u in candidates if u.replica not in tried)
            up = self._choose(routing, remaining, policy, tried) if remaining else None
            if up is None:
                if remaining:
                    reasons.append("the prefill replicas left are saturated or their circuit breakers open")
                break
            tried.add(up.replica)
            body = leg_body(prefill_payload(payload), up.model, PREFILL_PARAMS)
            try:
                params = await self._once(up, path, body, headers, label)
            except _Refused as exc:
                reasons.append(f"{up.replica} {exc}")
                break
            except _Failed as exc:
                reasons.append(f"{up.replica} {exc}")
                log.warning("request %s: prefill on %s failed: %s", request_id, up.replica, exc)
                continue
            return Prefilled(params, up.replica)
        why = "; ".join(reasons) or "no ready prefill replica"
        log.warning("request %s: the decode replica prefills itself: %s", request_id, why)
        return Prefilled(None, why=why)

    def _choose(
        self,
        routing: RoutingRequest,
        candidates: tuple[Upstream, ...],
        policy: RoutingPolicy,
        tried: set[str],
    ) -> Upstream | None:
        """The best prefill replica whose breaker lets a request through; None when none is left
        or the deployment's filters turned every one away."""
        up = self.breakers.first_allowed(
            candidates, lambda left: policy.pick(routing, left, self.state), tried
        )
        if up is not None:
            policy.routed(routing, up, self.state)
        return up

    async def _once(
        self, up: Upstream, path: bytes, body: bytes, headers: Sequence[tuple[bytes, bytes]], label: str
    ) -> dict[str, Any]:
        breaker = self.breakers.get(up.replica)
        self.state.board.acquire(up.replica)
        verdict: bool | None = None  # True: it answered (the answer may still be unusable); None: we left
        counted = False  # the breaker already heard of this failure, with its Retry-After
        resp = None
        try:
            try:
                resp = await self.pool.request(
                    up.origin, b"POST", path, body, list(headers) + list(up.headers)
                )
                payload = await resp.read_at_most(MAX_PREFILL_BODY)
            except UpstreamError as exc:
                verdict = False
                raise _Failed(str(exc)) from exc
            status = resp.status
            if status == 429 or status >= 500 or status in (401, 403):
                verdict, counted = False, True
                breaker.failure(
                    parse_retry_after(resp.header(b"retry-after")) if status in (429, 503) else None
                )
                raise _Failed(f"answered HTTP {status}: {payload[:200]!r}")
            verdict = True
            if status != 200:
                raise _Refused(f"answered HTTP {status}: {payload[:200]!r}")
            return _transfer_params(payload)
        finally:
            self.state.board.release(up.replica)
            if resp is not None and verdict:
                resp.release()
            elif resp is not None:
                resp.close()  # unread, or the client left: dropping the connection stops the engine
            self.metrics.attempt(label, "error" if verdict is False else "ok")
            if verdict is True:
                breaker.success()
            elif verdict is False and not counted:
                breaker.failure()
            elif verdict is None:
                breaker.release_probe()


def _transfer_params(body: bytes) -> dict[str, Any]:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _Refused(f"answered with a body that is not JSON: {exc}") from None
    params = answer.get("kv_transfer_params") if isinstance(answer, dict) else None
    if not isinstance(params, dict) or not params.get("do_remote_prefill"):
        raise _Refused(
            "answered without kv_transfer_params: start its engine with a KV connector "
            "(vLLM: --kv-transfer-config, kv_role kv_producer or kv_both)"
        )
    return params
