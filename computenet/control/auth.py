"""Admin scope of the control API, and the key routes it guards.

Keys come in two scopes: data-plane keys call the gateway (``/v1``), admin keys also
call the control API (``/api/v1``). With auth on, every control route but
``/version`` and ``/healthz`` needs ``Authorization: Bearer <admin key>``: 401 when
the key is missing, unknown, revoked or expired, 403 when it is a data-plane key.
The key text is compared with the stored hash in constant time (`ApiKey.matches`).
`POST /keys` answers the key text once; nothing else ever shows it or its hash.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from computenet.api import ApiKey, KeyLimits, key_id_of
from computenet.api.meta import NAME_PATTERN
from computenet.store import KeyStore, NotFound

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TENANT = re.compile(NAME_PATTERN)  # a key's tenant may name a Tenant resource


class AuthError(Exception):
    """A request without the right key: 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class InvalidField(ValueError):
    """A request field or query parameter the client must fix (400, naming the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def duration_s(text: str) -> float | None:
    """`30d`, `12h`, `90m`, `45s`, `2w` in seconds; None when `text` is not a duration."""
    match = _DURATION.match(text.strip())
    return None if match is None else int(match[1]) * _UNIT_S[match[2]]


def admin_guard(keys: KeyStore) -> Callable[[Request], Awaitable[None]]:
    """A route dependency that lets only requests bearing an active admin key through."""

    async def require_admin(request: Request) -> None:
        key = await _presented_key(keys, request.headers.get("authorization"))
        if not key.admin:
            raise AuthError(
                403,
                f"key {key.key_id} is a data-plane key; the control API needs an admin key "
                "(`computenet keys create --admin`)",
                "admin_key_required",
            )

    return require_admin


async def _presented_key(keys: KeyStore, authorization: str | None) -> ApiKey:
    scheme, _, text = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not text.strip():
        raise AuthError(
            401, "the control API needs an admin key: send `Authorization: Bearer <key>`", "missing_api_key"
        )
    text = text.strip()
    key_id = key_id_of(text)
    try:
        key = await keys.get(key_id) if key_id else None
    except NotFound:
        key = None
    # Check the hash first, whatever else is wrong, so that timing tells nothing about the record.
    if key is None or not key.matches(text) or key.revoked or _expired(key):
        raise AuthError(401, "the API key is unknown, revoked or expired", "invalid_api_key")
    return key


def _expired(key: ApiKey) -> bool:
    return key.expires_at is not None and key.expires_at <= time.time()


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class LimitsBody(_Body):
    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0)
    budget_usd: float | None = Field(None, gt=0, allow_inf_nan=False)
    budget_period: Literal["day", "month", "total"] = "month"


class KeyRequest(_Body):
    """Body of `POST /keys`. Give `expiresAt` (ISO 8601 or unix seconds) or `expiresIn` (`30d`), not both."""

    tenant: str
    models: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None  # ISO 8601 or unix seconds; without a zone: UTC
    expires_in: str | None = None
    admin: bool = False
    limits: LimitsBody = Field(default_factory=LimitsBody)

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if len(value) > 63 or not _TENANT.match(value):
            raise ValueError("must be a name like a Tenant's: 1-63 lowercase letters, digits and '-'")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        if any(not m.strip() for m in value):
            raise ValueError("model names must not be empty")
        return list(dict.fromkeys(m.strip() for m in value))

    def expiry(self, now: float) -> float | None:
        """The expiry in unix seconds; InvalidField unless it is one of the two forms and in the future."""
        if self.expires_at is not None and self.expires_in is not None:
            raise InvalidField("expiresIn", "give expiresAt or expiresIn, not both")
        if self.expires_in is not None:
            seconds = duration_s(self.expires_in)
            if not seconds:
                raise InvalidField(
                    "expiresIn", f"must be a duration like 30d, 12h or 90m, got {self.expires_in!r}"
                )
            return now + seconds
        if self.expires_at is None:
            return None
        at = self.expires_at.replace(tzinfo=self.expires_at.tzinfo or UTC).timestamp()
        if at <= now:
            raise InvalidField("expiresAt", f"must be in the future, got {self.expires_at.isoformat()}")
        return at

    def key_limits(self) -> KeyLimits:
        return KeyLimits(**self.limits.model_dump())


def add_key_routes(router: APIRouter, keys: KeyStore) -> None:
    @router.post("/keys", status_code=201, tags=["ApiKey"])
    async def create_key(body: KeyRequest) -> JSONResponse:
        """Create a key. The answer's `key` is the only time the key text is shown: keep it."""
        key, text = await keys.create(
            body.tenant,
            models=body.models,
            expires_at=body.expiry(time.time()),
            admin=body.admin,
            limits=body.key_limits(),
        )
        return JSONResponse({"key": text, **key_wire(key)}, status_code=201)

    @router.get("/keys", tags=["ApiKey"])
    async def list_keys() -> dict[str, Any]:
        return {"kind": "ApiKeyList", "items": [key_wire(k) for k in await keys.list()]}

    @router.get("/keys/{key_id}", tags=["ApiKey"])
    async def get_key(key_id: str) -> dict[str, Any]:
        return key_wire(await keys.get(key_id))

    @router.delete("/keys/{key_id}", tags=["ApiKey"])
    async def revoke_key(key_id: str) -> dict[str, Any]:
        """Revoke a key for good; gateways stop accepting it within moments."""
        return key_wire(await keys.revoke(key_id))


def key_wire(key: ApiKey) -> dict[str, Any]:
    """A key as the API shows it: never the secret, never its hash."""
    limits = key.limits
    return {
        "keyId": key.key_id,
        "tenant": key.tenant,
        "models": list(key.models),
        "admin": key.admin,
        "revoked": key.revoked,
        "expired": _expired(key),
        "expiresAt": iso_time(key.expires_at),
        "createdAt": iso_time(key.created_at),
        "limits": {
            "requestsPerMinute": limits.requests_per_minute,
            "tokensPerMinute": limits.tokens_per_minute,
            "budgetUsd": limits.budget_usd,
            "budgetPeriod": limits.budget_period,
        },
    }


def iso_time(unix_s: float | None) -> str | None:
    if unix_s is None:
        return None
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
