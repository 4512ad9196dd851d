"""Control API routes of the distributed mode: published endpoints for gateways, and who leads.

``GET /api/v1/endpoints`` answers every ready endpoint with the store's `endpoints`
revision. A gateway passes the revision it holds as ``after`` and ``waitSeconds``: the
request is held until the revision moves or the wait ends (long-poll), so a gateway
learns of a new replica within about a second (the store's change poll) while an idle
fleet costs one request per wait per gateway. Every control-plane replica answers,
leader or not: the endpoints are in the store.

``GET /api/v1/leader`` says which replica holds the control-plane lease, as the
database's clock sees it, and whether the answering replica is the one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from computenet.store import EndpointSnapshot, ResourceStore

from .auth import admin_guard
from .term import NotLeader

MAX_WAIT_S = 60.0


class Election(Protocol):
    """What the leader route reports of this replica's part in the election."""

    identity: str
    name: str

    @property
    def leading(self) -> bool: ...


def add_distributed_routes(
    app: FastAPI, store: ResourceStore, election: Election | None, *, auth_required: bool = False
) -> None:
    """Add the endpoints and leader routes to a control app (`create_control_app`'s)."""
    guarded = [Depends(admin_guard(store.keys))] if auth_required else []
    router = APIRouter(prefix="/v1", dependencies=guarded)

    @router.get("/endpoints", tags=["distributed"])
    async def endpoints(
        after: int | None = Query(None, ge=0, description="the revision the caller holds"),
        wait_s: float = Query(0.0, alias="waitSeconds", ge=0, le=MAX_WAIT_S),
    ) -> dict[str, Any]:
        """Every deployment's ready endpoints; with `after` and `waitSeconds`, wait for a newer revision."""
        snapshot = await _wait_for_change(store, after, wait_s)
        return {
            "kind": "EndpointList",
            "revision": snapshot.revision,
            "items": [p.to_wire() for p in snapshot.deployments],
        }

    @router.get("/leader", tags=["distributed"])
    async def leader() -> dict[str, Any]:
        if election is None:
            return {"leaderElection": False, "leading": True}
        reading = await store.leases.read(election.name)
        lease = reading.lease
        answer: dict[str, Any] = {
            "leaderElection": True,
            "lease": election.name,
            "identity": election.identity,
            "leading": election.leading,
            "holder": lease.holder if lease else "",
        }
        if lease is not None and lease.holder:
            answer |= {
                "acquiredAt": lease.acquired_at,
                "renewedAt": lease.renewed_at,
                "leaseDurationSeconds": lease.duration_s,
                "expiresInSeconds": round(max(0.0, lease.expires_at - reading.now), 3),
                "transitions": lease.transitions,
            }
        return answer

    app.include_router(router)
    app.add_exception_handler(NotLeader, _not_leader)


async def _wait_for_change(store: ResourceStore, after: int | None, wait_s: float) -> EndpointSnapshot:
    watchers = store.endpoints.watchers
    changed = watchers.watch()  # before the first read, so that no change slips between the two
    try:
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            changed.clear()
            snapshot = await store.endpoints.snapshot()
            left = deadline - asyncio.get_running_loop().time()
            if after is None or snapshot.revision != after or left <= 0:
                return snapshot
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
    finally:
        watchers.unwatch(changed)


async def _not_leader(_request: Request, exc: Exception) -> JSONResponse:
    body = {"error": {"message": str(exc), "type": "unavailable_error", "code": "not_leader"}}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
