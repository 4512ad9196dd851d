"""`Tenant` (who calls: rate limits and budget) and `APIKey` (a key declared by its hash).

Keys are normally minted with `computenet keys create`, which stores only a hash. An
`APIKey` document declares one the same way — by its SHA-256 or by the environment
variable that holds it — for gateways run from a file, without a store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from .meta import CamelModel, Resource
from .routes import RateLimits

BudgetPeriod = Literal["day", "month", "total"]


class Budget(CamelModel):
    limit_usd: float = Field(gt=0)
    period: BudgetPeriod = "month"


class TenantSpec(CamelModel):
    limits: RateLimits | None = None
    budget: Budget | None = None


class Tenant(Resource):
    kind: Literal["Tenant"] = "Tenant"
    spec: TenantSpec = Field(default_factory=TenantSpec)


class DeclaredKeySpec(CamelModel):
    tenant: str = Field(min_length=1)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    key_from_env: str | None = Field(default=None, min_length=1)
    models: list[str] = Field(default_factory=list, description="allowed public models; empty: all")
    expires_at: datetime | None = None
    admin: bool = False
    limits: RateLimits | None = None
    budget: Budget | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DeclaredKeySpec:
        if (self.key_sha256 is None) == (self.key_from_env is None):
            raise ValueError("set exactly one of keySha256 (hex SHA-256 of the key) or keyFromEnv")
        return self


class DeclaredKey(Resource):
    kind: Literal["APIKey"] = "APIKey"
    spec: DeclaredKeySpec
