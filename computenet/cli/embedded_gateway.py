"""The gateway of `computenet up`: built over the store, and kept in step with it.

The gateway may not import the store (see DESIGN.md), so this module is the glue:
it hands the gateway the store's usage table as its meter's sink, re-reads Routes,
Providers, Tenants and declared APIKeys whenever the store changes, writes each
Route's and Provider's `Ready` condition (so `computenet get routes` shows a broken
reference instead of a log line), and seeds the budget ledger with what was already
spent this period, so a restart does not hand every tenant a fresh budget.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from computenet.api import ConfigStatus, DeclaredKey, Provider, Route, Tenant, transition
from computenet.gateway import ConfigProblem, EndpointRegistry, Gateway
from computenet.gateway.auth import KeyBook
from computenet.gateway.guards import Guards
from computenet.gateway.limits import MemoryBudgetLedger, MemoryRateLimiter
from computenet.gateway.limits.accounts import period_window
from computenet.gateway.metering import UsageMeter
from computenet.gateway.tracing import Tracer
from computenet.store import NotFound, ResourceStore

from .gateway import declared_key

log = logging.getLogger(__name__)

USAGE_SPILL_FILE = "usage-spill.jsonl"


def embedded_gateway(
    store: ResourceStore, state_dir: Path, *, auth: bool, region: str | None = None
) -> Gateway:
    meter = UsageMeter(store.usage, spill_path=state_dir / USAGE_SPILL_FILE)
    guards = Guards(limiter=MemoryRateLimiter(), ledger=MemoryBudgetLedger(), meter=meter)
    return Gateway(
        EndpointRegistry(),
        keys=KeyBook(required=auth),
        guards=guards,
        tracer=Tracer.from_env(),
        region=region,
    )


async def follow_gateway_config(store: ResourceStore, gateway: Gateway) -> None:
    """Apply the store's Routes, Providers, Tenants and APIKeys to the gateway, now and on every change."""
    changed = store.watch()
    seeded: set[str] = set()
    while True:
        changed.clear()
        await _apply(store, gateway, seeded)
        await changed.wait()


async def _apply(store: ResourceStore, gateway: Gateway, seeded: set[str]) -> None:
    routes = [r for r in await store.list("Route") if isinstance(r, Route)]
    providers = [r for r in await store.list("Provider") if isinstance(r, Provider)]
    tenants = [r for r in await store.list("Tenant") if isinstance(r, Tenant)]
    declared = [declared_key(r) for r in await store.list("APIKey") if isinstance(r, DeclaredKey)]
    problems = gateway.configure(routes, providers, strict=False)
    await _write_status(store, [*routes, *providers], problems)
    gateway.guards.configure_tenants(tenants)
    gateway.keys.declare(declared)
    ledger = gateway.guards.ledger
    if ledger is None:
        return
    for tenant in tenants:
        budget = tenant.spec.budget
        if budget is None or tenant.name in seeded:
            continue
        since = period_window(budget.period, time.time()).starts_at
        spent = await store.usage.spend("tenant", since=since)
        await ledger.seed(f"tenant:{tenant.name}", budget.period, spent.get(tenant.name, 0.0))
        seeded.add(tenant.name)


async def _write_status(
    store: ResourceStore, resources: Sequence[Route | Provider], problems: Sequence[ConfigProblem]
) -> None:
    """One `Ready` condition per Route and Provider: in use as declared, or why not."""
    found = {(p.kind, p.name): p for p in problems}
    now = datetime.now(UTC)
    for resource in resources:
        problem = found.get((resource.kind, resource.name))
        previous = resource.status.conditions if resource.status else []
        if problem is None:
            ready = transition("Ready", True, "Accepted", "in use by the gateway", previous, now)
        else:
            log.error("gateway: %s", problem.message)
            kept = "; the gateway still serves its previous version" if problem.kept else ""
            ready = transition("Ready", False, "InvalidSpec", problem.message + kept, previous, now)
        # Deleted since it was listed: its delete woke the follower, which applies again.
        with contextlib.suppress(NotFound):
            await store.update_status(resource.kind, resource.name, ConfigStatus(conditions=[ready]))
