"""The control loop: make the replicas running on pools match the Deployments in the store.

Each pass reads desired state from the store and facts from the pool drivers, asks the
pure functions in `desired`, `plan` and `status` what to do, applies that, writes
status and publishes ready endpoints to the gateway. A pass runs whenever the store or
a pool reports a change, and at least every `resync_s` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from computenet.api import Deployment, Endpoint, EndpointSink, Model, PoolStatus
from computenet.pools import PoolDriver, ReplicaPhase, ReplicaSpec, ReplicaState
from computenet.store import NotFound, ResourceStore

from .desired import desired_replicas
from .plan import plan
from .status import deployment_status

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        store: ResourceStore,
        pools: Mapping[str, PoolDriver],
        sink: EndpointSink,
        *,
        resync_s: float = 5.0,
    ) -> None:
        self._store = store
        self._pools = pools
        self._sink = sink
        self._resync_s = resync_s
        self._published: dict[str, tuple[Endpoint, ...]] = {}

    async def run(self) -> None:
        """Reconcile until cancelled; one failed pass is logged and retried, never fatal."""
        wakeups = [self._store.watch(), *(pool.watch() for pool in self._pools.values())]
        while True:
            for event in wakeups:
                event.clear()
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed; retrying in %.1fs", self._resync_s)
            waiters = [asyncio.ensure_future(event.wait()) for event in wakeups]
            try:
                await asyncio.wait(waiters, timeout=self._resync_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.wait(waiters)

    async def reconcile_once(self) -> None:
        deployments = [d for d in await self._store.list("Deployment") if isinstance(d, Deployment)]
        models = {m.name: m for m in await self._store.list("Model") if isinstance(m, Model)}
        observed = await self.replicas()
        blocked: dict[str, tuple[str, str]] = {}
        desired: dict[str, list[ReplicaSpec]] = {name: [] for name in self._pools}
        for dep in deployments:
            pool, reason = self._place(dep, models)
            if reason is not None:
                blocked[dep.name] = reason
            elif pool is not None:
                desired[pool] += desired_replicas(dep, models[dep.spec.model])
        await self._apply(desired, observed, frozenset(blocked))
        observed = await self.replicas()
        for dep in deployments:
            await self._report(
                dep, [s for s in observed if s.spec.deployment == dep.name], blocked.get(dep.name)
            )
        await self._withdraw_missing({d.name for d in deployments})
        await self._report_pools(observed)

    async def replicas(self) -> list[ReplicaState]:
        states: list[ReplicaState] = []
        for pool in self._pools.values():
            states += await pool.replicas()
        return sorted(states, key=lambda s: s.name)

    async def logs(self, replica: str, *, tail_lines: int | None = None) -> str:
        for state in await self.replicas():
            if state.name == replica:
                try:
                    return await self._pools[state.pool].logs(replica, tail_lines=tail_lines)
                except KeyError:
                    break  # runs, but has written no log yet
        raise NotFound("Replica", replica)

    def _place(
        self, dep: Deployment, models: Mapping[str, Model]
    ) -> tuple[str | None, tuple[str, str] | None]:
        """Pick the pool for a deployment; the GPU scheduler takes this over when pools have GPUs."""
        if dep.spec.model not in models:
            message = f"Model {dep.spec.model!r} does not exist; apply a Model with that name"
            return None, ("ModelNotFound", message)
        allowed = dep.spec.placement.pools or list(self._pools)
        pool = next((name for name in allowed if name in self._pools), None)
        if pool is None:
            message = f"none of the pools {allowed} exists here; known pools: {sorted(self._pools)}"
            return None, ("PoolNotFound", message)
        return pool, None

    async def _apply(
        self,
        desired: Mapping[str, list[ReplicaSpec]],
        observed: Sequence[ReplicaState],
        blocked: frozenset[str],
    ) -> None:
        # Replicas of a blocked deployment are left as they are: a missing Model must not
        # take down what already serves.
        for pool_name, driver in self._pools.items():
            mine = [s for s in observed if s.pool == pool_name and s.spec.deployment not in blocked]
            decision = plan(desired[pool_name], mine)
            if decision.empty:
                continue
            log.info("pool %s: stop %s, start %s", pool_name, decision.stop, [s.name for s in decision.start])
            await asyncio.gather(*(driver.stop(name) for name in decision.stop))
            for spec in decision.start:
                await driver.start(spec)

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

    async def _report_pools(self, observed: Sequence[ReplicaState]) -> None:
        for pool in await self._store.list("Pool"):
            if pool.name in self._pools:
                count = sum(1 for s in observed if s.pool == pool.name)
                await self._store.update_status("Pool", pool.name, PoolStatus(replicas=count))
