"""The control API: apply, get, list and delete resources over HTTP + JSON.

Paths follow Kubernetes' shape under ``/api/v1`` (``/api/v1/deployments/NAME``), the
OpenAPI document is served at ``/api/openapi.json`` and browsable at ``/api/docs``.
Clients never write status: whatever `status` a body carries is ignored.
Errors use the same OpenAI-style body as the gateway, ``{"error": {...}}``; an invalid
field or query parameter is a 400 that names it. API keys and the admin scope that
guards these routes when auth is on live in `auth`; usage totals are served here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import TypeAdapter, ValidationError

from computenet import __version__
from computenet.api import KINDS, PLURALS, ManifestError, Problem, load_documents, parse_resource
from computenet.pools import ReplicaState
from computenet.store import Conflict, NotFound, ResourceStore

from .auth import AuthError, InvalidField, add_key_routes, admin_guard, duration_s, iso_time

_INSTANT = TypeAdapter(datetime)


class ReplicaSource(Protocol):
    async def replicas(self) -> list[ReplicaState]: ...

    def nodes(self) -> list[dict[str, Any]]:
        """Every pool's nodes as the last reconcile pass saw them, in wire form."""
        ...

    async def logs(self, replica: str, *, tail_lines: int | None = None) -> str: ...


def create_control_app(
    store: ResourceStore, replicas: ReplicaSource, *, auth_required: bool = False
) -> FastAPI:
    """The control API; with `auth_required`, every route but /version and /healthz needs an admin key."""
    app = FastAPI(title="ComputeNet control API", version=__version__, docs_url="/docs")
    public = APIRouter(prefix="/v1")
    guarded = [Depends(admin_guard(store.keys))] if auth_required else []
    router = APIRouter(prefix="/v1", dependencies=guarded)
    for kind in KINDS:
        _add_kind_routes(router, store, kind)
    _add_apply_route(router, store)
    _add_replica_routes(router, replicas)
    add_key_routes(router, store.keys)
    _add_usage_route(router, store)

    @public.get("/version", tags=["meta"])
    async def version() -> dict[str, str]:
        return {"version": __version__}

    app.include_router(public)
    app.include_router(router)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(ManifestError, _invalid)
    app.add_exception_handler(InvalidField, _invalid_field)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(AuthError, _unauthorized)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _add_kind_routes(router: APIRouter, store: ResourceStore, kind: str) -> None:
    plural = PLURALS[kind]
    schema: dict[int | str, dict[str, Any]] = {200: {"model": KINDS[kind]}}

    @router.get(f"/{plural}", name=f"list_{plural}", tags=[kind])
    async def list_kind() -> dict[str, Any]:
        items = await store.list(kind)
        return {
            "apiVersion": "computenet.io/v1",
            "kind": f"{kind}List",
            "items": [r.to_wire() for r in items],
        }

    @router.get(f"/{plural}/{{name}}", name=f"get_{kind.lower()}", tags=[kind], responses=schema)
    async def get_one(name: str) -> JSONResponse:
        return JSONResponse((await store.get(kind, name)).to_wire())

    @router.put(f"/{plural}/{{name}}", name=f"apply_{kind.lower()}", tags=[kind], responses=schema)
    async def apply_one(name: str, request: Request) -> JSONResponse:
        """Create or update. Send metadata.resourceVersion to update only an unchanged object."""
        body = await _json(request)
        resource = parse_resource(body, source="request")
        if resource.kind != kind or resource.name != name:
            problem = f"body is {resource.kind} {resource.name!r} but the URL names {kind} {name!r}"
            return _error(400, problem, "invalid_request_error", "name_mismatch")
        stored, action = await store.apply(resource)
        return JSONResponse(stored.to_wire(), status_code=201 if action == "created" else 200)

    @router.delete(f"/{plural}/{{name}}", name=f"delete_{kind.lower()}", tags=[kind], responses=schema)
    async def delete_one(name: str) -> JSONResponse:
        return JSONResponse((await store.delete(kind, name)).to_wire())


def _add_apply_route(router: APIRouter, store: ResourceStore) -> None:
    @router.post("/apply", tags=["apply"])
    async def apply_many(request: Request, dry_run: bool = Query(False, alias="dryRun")) -> dict[str, Any]:
        """Apply a list of resources all or nothing: one invalid document rejects the whole list.

        Body: ``{"items": [...], "source": "file name used in error messages"}``.
        """
        body = await _json(request)
        items, source = body.get("items"), str(body.get("source") or "request")
        if not isinstance(items, list):
            raise ManifestError([_problem(source, "items must be a list of resources")])
        resources = load_documents(items, source=source)
        if dry_run:
            results = [{"kind": r.kind, "name": r.name, "action": "validated"} for r in resources]
        else:
            applied = await store.apply_all(resources)
            results = [{"kind": r.kind, "name": r.name, "action": action} for r, action in applied]
        return {"results": results}


def _add_replica_routes(router: APIRouter, source: ReplicaSource) -> None:
    @router.get("/replicas", tags=["Replica"])
    async def list_replicas() -> dict[str, Any]:
        return {"kind": "ReplicaList", "items": [_replica_wire(s) for s in await source.replicas()]}

    @router.get("/nodes", tags=["Node"])
    async def list_nodes() -> dict[str, Any]:
        return {"kind": "NodeList", "items": source.nodes()}

    @router.get("/replicas/{name}/log", tags=["Replica"], response_class=PlainTextResponse)
    async def replica_log(name: str, tail_lines: int | None = Query(None, alias="tailLines", ge=1)) -> str:
        return await source.logs(name, tail_lines=tail_lines)


def _add_usage_route(router: APIRouter, store: ResourceStore) -> None:
    @router.get("/usage", tags=["usage"])
    async def usage_totals(
        tenant: str | None = None, since: str | None = None, until: str | None = None
    ) -> dict[str, Any]:
        """Totals per tenant, public model and UTC day of requests started in [since, until).

        `since` and `until`: an ISO 8601 date or time (UTC unless it names a zone), unix
        seconds, or a duration back from now such as `7d` or `12h`.
        """
        now = time.time()
        start = None if since is None else _instant("since", since, now)
        end = None if until is None else _instant("until", until, now)
        totals = await store.usage.totals(tenant=tenant, since=start, until=end)
        return {
            "kind": "UsageTotals",
            "since": iso_time(start),
            "until": iso_time(end),
            "items": [t.to_wire() for t in totals],
        }


def _instant(field: str, text: str, now: float) -> float:
    ago = duration_s(text)
    if ago is not None:
        return now - ago
    try:
        at = _INSTANT.validate_python(text)
    except ValidationError:
        raise InvalidField(
            field,
            "must be a date (2026-11-01), a time (2026-11-01T12:00:00Z), unix seconds "
            f"or a duration back from now (7d), got {text!r}",
        ) from None
    return at.replace(tzinfo=at.tzinfo or UTC).timestamp()


def _replica_wire(state: ReplicaState) -> dict[str, Any]:
    return {
        "name": state.name,
        "deployment": state.spec.deployment,
        "role": state.spec.role,
        "engine": state.spec.engine,
        "pool": state.pool,
        "node": state.node,
        "phase": state.phase.value,
        "url": state.url,
        "pid": state.pid,
        "restarts": state.restarts,
        "lastExitCode": state.last_exit_code,
        "startedAt": state.started_at,
        "message": state.message,
        "kvEvents": state.kv_events,
        "kvEventsReplay": state.kv_events_replay,
    }


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ManifestError([_problem("request", f"body is not valid JSON: {exc}")]) from exc
    if not isinstance(body, dict):
        raise ManifestError([_problem("request", "body must be a JSON object")])
    return body


def _problem(source: str, message: str) -> Problem:
    return Problem(source, 0, "", message)  # doc 0: the request as a whole


def _error(status: int, message: str, type_: str, code: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "code": code, **extra}}, status_code=status
    )


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return _error(404, str(exc), "not_found_error", "not_found")


async def _conflict(_request: Request, exc: Exception) -> JSONResponse:
    return _error(409, str(exc), "conflict_error", "conflict")


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    problems = [str(p) for p in exc.problems] if isinstance(exc, ManifestError) else [str(exc)]
    return _error(400, str(exc), "invalid_request_error", "invalid_manifest", problems=problems)


async def _invalid_field(_request: Request, exc: Exception) -> JSONResponse:
    field = exc.field if isinstance(exc, InvalidField) else None
    return _error(400, str(exc), "invalid_request_error", "invalid_value", param=field, problems=[str(exc)])


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own validation (typed bodies and query parameters) as a 400 naming each field."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = [_explain(e) for e in errors] or ["invalid request"]
    param = _field(errors[0]["loc"]) if errors else None
    return _error(
        400, "; ".join(problems), "invalid_request_error", "invalid_value", param=param, problems=problems
    )


def _explain(error: Any) -> str:
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    got = f", got {error['input']!r}" if error.get("type") != "missing" and "input" in error else ""
    field = _field(error.get("loc", ()))
    return f"{field}: {message}{got}" if field else f"{message}{got}"


def _field(loc: Any) -> str:
    """`("body", "limits", "requestsPerMinute")` -> `limits.requestsPerMinute`."""
    parts = list(loc)[1:] if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


async def _unauthorized(_request: Request, exc: Exception) -> JSONResponse:
    status, code = (exc.status, exc.code) if isinstance(exc, AuthError) else (401, "invalid_api_key")
    type_ = "authentication_error" if status == 401 else "permission_error"
    response = _error(status, str(exc), type_, code)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response
