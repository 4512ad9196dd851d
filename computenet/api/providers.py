"""The `Provider` kind: an external OpenAI-compatible API used as a backend or fallback.

The provider's API key is never written into a manifest or the store: the spec names
where to read it (an environment variable or a secret file), and the gateway reads it
when it loads the provider.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .meta import CamelModel, ConfigStatus, Resource


class SecretRef(CamelModel):
    """Where a secret lives: exactly one of `fromEnv` or `fromFile`."""

    from_env: str | None = Field(default=None, min_length=1, description="environment variable name")
    from_file: str | None = Field(default=None, min_length=1, description="path of a file holding it")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.from_env is None) == (self.from_file is None):
            raise ValueError("set exactly one of fromEnv (a variable name) or fromFile (a path)")
        return self


class Price(CamelModel):
    """US dollars per 1M tokens."""

    input: float = Field(default=0.0, ge=0)
    cached_input: float | None = Field(default=None, ge=0, description="default: the input price")
    output: float = Field(default=0.0, ge=0)

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        cached_price = self.input if self.cached_input is None else self.cached_input
        return ((prompt - cached) * self.input + cached * cached_price + completion * self.output) / 1e6


class ProviderModel(CamelModel):
    name: str = Field(min_length=1, description="the model name this provider knows")
    price: Price = Field(default_factory=Price)


class ProviderSpec(CamelModel):
    base_url: str = Field(description="e.g. https://api.openai.com/v1 (paths /chat/completions etc. follow)")
    api_key: SecretRef | None = None
    region: str = "external"
    timeout_seconds: float = Field(default=600, gt=0, description="read timeout between bytes")
    max_concurrency: int | None = Field(default=None, ge=1, description="requests in flight at once")
    headers: dict[str, str] = Field(default_factory=dict, description="extra static request headers")
    models: list[ProviderModel] = Field(default_factory=list)
    api: Literal["openai"] = "openai"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")


class Provider(Resource):
    kind: Literal["Provider"] = "Provider"
    spec: ProviderSpec
    status: ConfigStatus | None = None
