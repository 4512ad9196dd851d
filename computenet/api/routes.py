"""The `Route` kind: how a public model name maps to deployments and providers.

Targets share the traffic by weight; fallbacks are tried in order only when every
target failed (or had no ready replica) before a byte reached the client.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .meta import CamelModel, ConfigStatus, Resource
from .providers import Price
from .routing import PolicySpec


class RateLimits(CamelModel):
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class Target(CamelModel):
    """One backend: a deployment of ours, or one model of a provider."""

    deployment: str | None = Field(default=None, min_length=1)
    provider: str | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1, description="the provider's model name")
    weight: int = Field(default=1, ge=0)
    price: Price | None = Field(default=None, description="overrides the provider's price for this target")

    @model_validator(mode="after")
    def _one_backend(self) -> Target:
        if (self.deployment is None) == (self.provider is None):
            raise ValueError("set exactly one of `deployment` or `provider` (with `model`)")
        if self.provider is not None and self.model is None:
            raise ValueError("a provider target needs `model`: the provider's name for the model")
        return self

    @property
    def label(self) -> str:
        return f"deployment/{self.deployment}" if self.deployment else f"provider/{self.provider}"


class RouteSpec(CamelModel):
    model: str | None = Field(default=None, min_length=1, description="public model name; default: the name")
    targets: list[Target] = Field(min_length=1)
    fallbacks: list[Target] = Field(default_factory=list)
    timeout_seconds: float = Field(default=600, gt=0, description="deadline for the whole request")
    retries: int = Field(default=2, ge=0, le=10, description="extra attempts after the first")
    limits: RateLimits | None = None
    policy: PolicySpec = Field(default_factory=PolicySpec, description="a preset name, or a pipeline")


class Route(Resource):
    kind: Literal["Route"] = "Route"
    spec: RouteSpec
    status: ConfigStatus | None = None

    @property
    def public_model(self) -> str:
        return self.spec.model or self.name
