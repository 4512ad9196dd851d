"""What stands between an authenticated request and its backends — rate limits, the
budget, the priority queue — and, once the answer is out, the accounting that
settles them and meters the request.

Each guard is optional; with none configured `admit` returns at once and the only
cost left is the usage record. Admission charges the request's *estimate* (prompt
tokens + `max_tokens`, at the dearest backend's price); `finish` corrects every
charge with the real usage, so nothing drifts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from computenet.api import ApiKey, Price, Tenant, UsageRecord

from .admission import UNLIMITED, Gates, Shed, parse_priority
from .forward import Exchange
from .limits import Admission, BudgetCap, BudgetLedger, Limit, RateLimiter, Reservation
from .metering import UsageMeter
from .metrics import GatewayMetrics
from .routes import RoutePlan


class Refusal(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        type_: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.type_ = status, code, message, type_
        self.headers = headers or []


@dataclass(slots=True)
class Ticket:
    admission: Admission | None = None
    reservation: Reservation | None = None
    gate_model: str | None = None


@dataclass
class Guards:
    limiter: RateLimiter | None = None
    ledger: BudgetLedger | None = None
    gates: Gates | None = None
    meter: UsageMeter | None = None
    region: str = ""
    tenants: dict[str, Tenant] = field(default_factory=dict)

    def configure_tenants(self, tenants: Sequence[Tenant]) -> None:
        self.tenants = {t.name: t for t in tenants}

    async def start(self) -> None:
        if self.meter is not None:
            await self.meter.start()

    async def close(self) -> None:
        if self.meter is not None:
            await self.meter.close()  # writes every pending record (or spills it) before returning
        for part in (self.limiter, self.ledger):
            if part is not None:
                await part.close()

    def register_metrics(self, metrics: GatewayMetrics) -> None:
        gates, meter = self.gates, self.meter
        if gates is not None:
            metrics.add_gauges(
                "computenet_gateway_queue_length",
                "Requests waiting at the gateway for a saturated model, by model.",
                "model",
                lambda: {m: float(g.queued) for m, g in gates.items()},
            )
            metrics.add_gauges(
                "computenet_gateway_admission_capacity",
                "Requests the gateway lets a model have in flight before it queues the rest, by model.",
                "model",
                lambda: {m: float(g.capacity) for m, g in gates.items() if g.capacity != UNLIMITED},
            )
        if meter is not None:
            metrics.add_gauges(
                "computenet_gateway_usage_records",
                "Usage records by state (pending, written, spilled, dropped).",
                "state",
                lambda: {
                    "pending": meter.pending,
                    "written": meter.written_total,
                    "spilled": meter.spilled_total,
                    "dropped": meter.dropped_total,
                },
            )

    async def admit(
        self, ex: Exchange, plan: RoutePlan, key: ApiKey | None, max_tokens: int, priority: bytes | None
    ) -> Ticket | None:
        if self.limiter is None and self.ledger is None and self.gates is None:
            return None
        ticket = Ticket()
        level = self._priority(priority)
        estimate = ex.prompt_estimate + max_tokens
        tenant = self.tenants.get(key.tenant) if key is not None else None
        if self.limiter is not None:
            limits = _limits(plan, key, tenant)
            if limits:
                admission = ticket.admission = await self.limiter.admit(limits, estimate)
                headers = [(k.encode(), v.encode()) for k, v in admission.headers.items()]
                if not admission.allowed:
                    raise self._limit_refusal(admission, headers)
                ex.response_headers += headers
        try:
            if self.ledger is not None:
                caps = _caps(key, tenant)
                if caps:
                    amount = plan.max_price.cost(ex.prompt_estimate, 0, max_tokens)
                    reservation = await self.ledger.reserve(caps, amount)
                    if not reservation.allowed:
                        raise _budget_refusal(reservation)
                    ticket.reservation = reservation
            if self.gates is not None:
                try:
                    await self.gates.gate(ex.model).enter(level)
                except Shed as shed:
                    raise Refusal(
                        shed.status,
                        "shed",
                        f"`{ex.model}` is saturated and this request was shed: {shed.reason}",
                        "rate_limit_error" if shed.status == 429 else "service_unavailable",
                        [(b"retry-after", str(max(1, round(shed.retry_after_s))).encode())],
                    ) from None
                ticket.gate_model = ex.model
        except BaseException:
            await self._undo(ticket)
            raise
        return ticket

    async def finish(
        self,
        ticket: Ticket | None,
        ex: Exchange,
        *,
        tenant: str,
        key_id: str,
        started_wall: float,
        latency_s: float,
    ) -> None:
        """Settle every charge with the real usage, then queue the usage record."""
        usage = ex.usage
        prompt = usage.prompt_tokens if usage else 0
        cached = usage.cached_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        price: Price | None = ex.price
        cost = price.cost(prompt, cached, completion) if price is not None and usage else 0.0
        if ticket is not None:
            if ticket.gate_model is not None and self.gates is not None:
                self.gates.gate(ticket.gate_model).leave()
            if ticket.admission is not None and self.limiter is not None:
                await self.limiter.settle(ticket.admission, prompt + completion)
            if ticket.reservation is not None and self.ledger is not None:
                await self.ledger.settle(ticket.reservation, cost)
        if self.meter is not None:
            up = ex.upstream
            self.meter.record(
                UsageRecord(
                    request_id=ex.request_id,
                    started_at=started_wall,
                    tenant=tenant,
                    key_id=key_id,
                    model=ex.model,
                    backend=up.backend if up else "",
                    endpoint=up.endpoint if up else "",
                    region=up.region if up else self.region,
                    prompt_tokens=prompt,
                    cached_tokens=cached,
                    completion_tokens=completion,
                    cost_usd=cost,
                    ttft_s=ex.ttft_s,
                    latency_s=latency_s,
                    status=ex.status,
                    estimated=bool(usage and usage.estimated),
                )
            )

    async def _undo(self, ticket: Ticket) -> None:
        """A request refused after some guards charged it gives their charges back."""
        if ticket.admission is not None and self.limiter is not None:
            await self.limiter.settle(ticket.admission, 0)
        if ticket.reservation is not None and self.ledger is not None:
            await self.ledger.settle(ticket.reservation, 0.0)

    @staticmethod
    def _priority(header: bytes | None) -> int:
        if header is None:
            return 0
        try:
            return parse_priority(header.decode("latin-1"))
        except ValueError as exc:
            raise Refusal(400, "bad_priority", str(exc), "invalid_request_error") from None

    @staticmethod
    def _limit_refusal(admission: Admission, headers: list[tuple[bytes, bytes]]) -> Refusal:
        if admission.unavailable:
            return Refusal(
                503,
                "limiter_unavailable",
                "rate limits cannot be checked right now (the shared limiter is unreachable); retry shortly",
                "service_unavailable",
                headers or [(b"retry-after", b"1")],
            )
        return Refusal(
            429,
            "rate_limit_exceeded",
            f"Rate limit reached for {admission.limited_by}; retry after {admission.retry_after_s:.1f} s.",
            "rate_limit_error",
            headers,
        )


def _limits(plan: RoutePlan, key: ApiKey | None, tenant: Tenant | None) -> list[Limit]:
    limits = []
    if key is not None and (key.limits.requests_per_minute or key.limits.tokens_per_minute):
        limits.append(
            Limit(f"key:{key.key_id}", key.limits.requests_per_minute, key.limits.tokens_per_minute)
        )
    if tenant is not None and tenant.spec.limits is not None:
        lim = tenant.spec.limits
        limits.append(Limit(f"tenant:{tenant.name}", lim.requests_per_minute, lim.tokens_per_minute))
    if plan.limits is not None:
        limits.append(
            Limit(f"model:{plan.model}", plan.limits.requests_per_minute, plan.limits.tokens_per_minute)
        )
    return limits


def _caps(key: ApiKey | None, tenant: Tenant | None) -> list[BudgetCap]:
    caps = []
    if key is not None and key.limits.budget_usd is not None:
        caps.append(BudgetCap(f"key:{key.key_id}", key.limits.budget_usd, key.limits.budget_period))
    if tenant is not None and tenant.spec.budget is not None:
        caps.append(
            BudgetCap(f"tenant:{tenant.name}", tenant.spec.budget.limit_usd, tenant.spec.budget.period)
        )
    return caps


def _budget_refusal(reservation: Reservation) -> Refusal:
    if reservation.unavailable:
        return Refusal(
            503, "ledger_unavailable", reservation.message, "service_unavailable", [(b"retry-after", b"1")]
        )
    headers = []
    if reservation.resets_at is not None:
        headers.append((b"retry-after", str(max(1, int(reservation.resets_at - time.time()))).encode()))
    return Refusal(429, "insufficient_quota", reservation.message, "insufficient_quota", headers)
