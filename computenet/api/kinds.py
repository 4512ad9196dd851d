"""Every kind by name, and the names a user may type for it (`deploy`, `deployments`, ...)."""

from __future__ import annotations

from .deployments import Deployment
from .meta import Resource
from .models import Model
from .pools import Pool
from .providers import Provider
from .routes import Route
from .tenants import DeclaredKey, Tenant

AnyResource = Model | Deployment | Pool | Provider | Route | Tenant | DeclaredKey

KINDS: dict[str, type[Resource]] = {
    "Model": Model,
    "Deployment": Deployment,
    "Pool": Pool,
    "Provider": Provider,
    "Route": Route,
    "Tenant": Tenant,
    "APIKey": DeclaredKey,
}

# Lower-case plural, as in URLs: /api/v1/deployments/NAME
PLURALS: dict[str, str] = {
    "Model": "models",
    "Deployment": "deployments",
    "Pool": "pools",
    "Provider": "providers",
    "Route": "routes",
    "Tenant": "tenants",
    "APIKey": "apikeys",
}

_ALIASES: dict[str, str] = {
    "model": "Model",
    "models": "Model",
    "mo": "Model",
    "deployment": "Deployment",
    "deployments": "Deployment",
    "deploy": "Deployment",
    "pool": "Pool",
    "pools": "Pool",
    "provider": "Provider",
    "providers": "Provider",
    "route": "Route",
    "routes": "Route",
    "tenant": "Tenant",
    "tenants": "Tenant",
    "apikey": "APIKey",
    "apikeys": "APIKey",
}


def kind_from_user(text: str) -> str:
    """Resolve what a user typed (`deploy`, `Models`, ...) to a kind, or raise with the choices."""
    kind = _ALIASES.get(text.lower())
    if kind is None:
        choices = ", ".join(sorted({*PLURALS.values()}))
        raise ValueError(f"unknown resource type {text!r}; use one of: {choices}")
    return kind
