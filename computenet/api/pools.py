"""The `Pool` kind: a place that runs replicas."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .meta import CamelModel, Condition, Resource


class PoolSpec(CamelModel):
    # Only `local` exists so far; `ray` and `kubernetes` join this literal with their drivers.
    type: Literal["local"] = "local"
    region: str = "local"
    zone: str = "local"


class PoolStatus(CamelModel):
    replicas: int = 0
    conditions: list[Condition] = Field(default_factory=list)


class Pool(Resource):
    kind: Literal["Pool"] = "Pool"
    spec: PoolSpec = Field(default_factory=PoolSpec)
    status: PoolStatus | None = None
