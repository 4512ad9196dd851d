"""The control loop: make the replicas running on pools match the Deployments in the store.

Each pass reads desired state from the store and facts from the pool drivers (their nodes and
replicas), asks the pure functions in `desired`, `plan`, `placement` and `status` what to do, applies
that, writes status and publishes ready endpoints to the gateway. A pass runs whenever the store or a
pool reports a change, and at least every `resync_s` seconds.

A pool that cannot be reached keeps the replicas it was last seen running: they are neither stopped
nor started again elsewhere on a guess, and the Pool's `Ready` condition says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from computenet.api import Deployment, Endpoint, EndpointSink, Model, NodeInfo, Pool, PoolStatus, transition
from computenet.pools import PoolDriver, ReplicaPhase, ReplicaState
from computenet.store import NotFound, ResourceStore

from .desired import desired_replicas
from .fleet import PoolView
from .placement import Assignment, place_replicas
from .plan import plan
from .pool_set import PoolSet
from .status import deployment_status

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        store: ResourceStore,
        pools: PoolSet | Mapping[str, PoolDriver],
        sink: EndpointSink,
        *,
        resync_s: float = 5.0,
    ) -> None:
        self._store = store
        self._pools = pools if isinstance(pools, PoolSet) else PoolSet.of(pools)
        self._sink = sink
        self._resync_s = resync_s
        self._published: dict[str, tuple[Endpoint, ...]] = {}
        self._seen: dict[str, list[ReplicaState]] = {}  # per pool: its replicas when last reached
        self._unreachable: dict[str, str] = {}  # per pool: why the last pass could not reach it
        self._views: list[PoolView] = []  # every pool's nodes as the last pass saw them

    async def run(self) -> None:
        """Reconcile until cancelled; one failed pass is logged and retried, never fatal."""
        store_changed = self._store.watch()  # one event for the loop's life: writes during a pass set it
        while True:
            for event in [store_changed, *(pool.watch() for pool in self._pools.values())]:
                event.clear()
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed; retrying in %.1fs", self._resync_s)
            # Pools built during the pass (a new leader's first pass builds them all) are waited on too:
            # their replicas turning ready must wake the next pass, not wait for the resync.
            wakeups = [store_changed, *(pool.watch() for pool in self._pools.values())]
            waiters = [asyncio.ensure_future(event.wait()) for event in wakeups]
            try:
                await asyncio.wait(waiters, timeout=self._resync_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.wait(waiters)

    async def reconcile_once(self) -> None:
        pools = [p for p in await self._store.list("Pool") if isinstance(p, Pool)]
        await self._pools.sync(pools)
        deployments = [d for d in await self._store.list("Deployment") if isinstance(d, Deployment)]
        models = {m.name: m for m in await self._store.list("Model") if isinstance(m, Model)}
        observed = await self.replicas()
        views = self._views = await self._pool_views(pools)
        blocked: dict[str, tuple[str, str]] = {}
        desired = []
        for dep in deployments:
            if dep.spec.model in models:
                desired += desired_replicas(dep, models[dep.spec.model])
            else:
                message = f"Model {dep.spec.model!r} does not exist; apply a Model with that name"
                blocked[dep.name] = ("ModelNotFound", message)
        # Replicas of a blocked deployment are left as they are: a missing Model must not take down
        # what already serves.
        live, duplicates = _dedupe([s for s in observed if s.spec.deployment not in blocked])
        decision = plan(desired, live)
        kept = [s for s in live if s.name not in decision.stop]
        placed = place_replicas(
            decision.start, kept, views, {d.name: d for d in deployments if d.name not in blocked}
        )
        for name, reason in placed.unschedulable.items():
            blocked[name] = ("Unschedulable", reason)
        await self._apply(duplicates + [s for s in live if s.name in decision.stop], placed.start)
        observed = await self.replicas()
        for dep in deployments:
            await self._report(
                dep, [s for s in observed if s.spec.deployment == dep.name], blocked.get(dep.name)
            )
        await self._withdraw_missing({d.name for d in deployments})
        await self._report_pools(pools, observed, views)

    async def replicas(self) -> list[ReplicaState]:
        states: list[ReplicaState] = []
        for name, pool in self._pools.items():
            try:
                self._seen[name] = await pool.replicas()
                self._unreachable.pop(name, None)
            except Exception as exc:  # a remote pool's API; its last known replicas stand in
                self._unreachable[name] = f"listing replicas failed: {exc}"
                log.warning("pool %s: %s", name, self._unreachable[name])
            states += self._seen.get(name, [])
        return sorted(states, key=lambda s: s.name)

    async def logs(self, replica: str, *, tail_lines: int | None = None) -> str:
        for state in await self.replicas():
            if state.name == replica:
                try:
                    return await self._pools[state.pool].logs(replica, tail_lines=tail_lines)
                except KeyError:
                    break  # runs, but has written no log yet
        raise NotFound("Replica", replica)

    def nodes(self) -> list[dict[str, Any]]:
        """Every pool's nodes as the last pass saw them, in wire form (`computenet get nodes`)."""
        return [
            {"pool": v.name, "region": v.region, "zone": v.zone, **n.model_dump(by_alias=True)}
            for v in self._views
            for n in v.nodes
        ]

    async def _pool_views(self, pools: Sequence[Pool]) -> list[PoolView]:
        prices = {p.name: p.spec.price_per_gpu_hour for p in pools}
        labels = {p.name: p.spec.labels for p in pools}
        views = []
        for name, driver in self._pools.items():
            nodes: Sequence[NodeInfo] = ()
            if name not in self._unreachable:
                try:
                    nodes = await driver.nodes()
                except Exception as exc:
                    self._unreachable[name] = f"listing nodes failed: {exc}"
                    log.warning("pool %s: %s", name, self._unreachable[name])
            extra = labels.get(name, {})
            nodes = tuple(n.model_copy(update={"labels": {**extra, **n.labels}}) for n in nodes)
            views.append(PoolView(name, driver.region, driver.zone, nodes, prices.get(name, {})))
        return views

    async def _apply(self, stop: Sequence[ReplicaState], start: Sequence[Assignment]) -> None:
        if stop or start:
            log.info(
                "stop %s, start %s",
                [f"{s.pool}/{s.name}" for s in stop],
                [f"{a.pool}/{a.spec.node}/{a.spec.name}" for a in start],
            )
        results = await asyncio.gather(
            *(self._pools[s.pool].stop(s.name) for s in stop if s.pool in self._pools), return_exceptions=True
        )
        for state, result in zip(stop, results, strict=False):
            if isinstance(result, Exception):
                log.warning("pool %s: stopping %s failed: %s", state.pool, state.name, result)
        for assignment in start:
            try:
                await self._pools[assignment.pool].start(assignment.spec)
            except Exception:
                log.exception("pool %s: starting %s failed", assignment.pool, assignment.spec.name)

    async def _report(
        self, dep: Deployment, observed: list[ReplicaState], blocked: tuple[str, str] | None
    ) -> None:
        status = deployment_status(dep, observed, blocked=blocked)
        try:
            await self._store.update_status("Deployment", dep.name, status)
        except NotFound:
            return  # deleted during this pass; the next pass stops its replicas
        # Every ready replica is published with its role: `server` and `router` replicas take whole
        # requests; the gateway pairs `prefill` and `decode` replicas itself when there is no router.
        endpoints = tuple(
            Endpoint(
                replica=s.name,
                deployment=dep.name,
                model=s.spec.served_name,
                url=s.url,
                role=s.spec.role,
                engine=s.spec.engine,
                pool=s.pool,
                region=self._pools[s.pool].region if s.pool in self._pools else "",
                kv_events=s.kv_events,
                kv_events_replay=s.kv_events_replay,
            )
            for s in observed
            if s.phase == ReplicaPhase.READY and s.url
        )
        if self._published.get(dep.name) != endpoints:
            await self._sink.publish(
                dep.name, endpoints, model=dep.spec.model, policy=dep.spec.routing.policy
            )
            self._published[dep.name] = endpoints

    async def _withdraw_missing(self, present: set[str]) -> None:
        for name in set(self._published) - present:
            await self._sink.withdraw(name)
            del self._published[name]

    async def _report_pools(
        self, pools: Sequence[Pool], observed: Sequence[ReplicaState], views: Sequence[PoolView]
    ) -> None:
        nodes = {v.name: v.nodes for v in views}
        now = datetime.now(UTC)
        for pool in pools:
            mine = nodes.get(pool.name, ())
            problem = self._pools.problems.get(pool.name) or self._unreachable.get(pool.name)
            reason = (
                "Reachable"
                if problem is None
                else ("DriverUnavailable" if pool.name in self._pools.problems else "Unreachable")
            )
            previous = pool.status.conditions if pool.status else []
            ready = transition("Ready", problem is None, reason, problem or "", previous, now)
            status = PoolStatus(
                replicas=sum(1 for s in observed if s.pool == pool.name),
                nodes=len(mine),
                ready_nodes=sum(1 for n in mine if n.ready),
                gpus=sum(n.gpus for n in mine),
                conditions=[ready],
            )
            if pool.status != status:
                try:
                    await self._store.update_status("Pool", pool.name, status)
                except NotFound:
                    continue


def _dedupe(states: Sequence[ReplicaState]) -> tuple[list[ReplicaState], list[ReplicaState]]:
    """One replica per name: a name found in two pools (a move cut short) keeps its ready copy."""
    best: dict[str, ReplicaState] = {}
    extra: list[ReplicaState] = []
    for state in sorted(states, key=lambda s: (s.phase != ReplicaPhase.READY, s.pool)):
        if state.name in best:
            extra.append(state)
        else:
            best[state.name] = state
    return sorted(best.values(), key=lambda s: s.name), extra
