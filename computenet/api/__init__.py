"""Resource schemas (pydantic), YAML loading and validation errors. Imports nothing of ours."""

from .deployments import Deployment, DeploymentSpec, DeploymentStatus, Resources, Role, RoleStatus
from .endpoints import Endpoint, EndpointSink, PublishedEndpoints
from .keys import ApiKey, KeyLimits, hash_key, key_id_of, mint_key
from .kinds import KINDS, PLURALS, AnyResource, kind_from_user
from .loading import ManifestError, Problem, load_documents, load_file, load_text, parse_resource
from .meta import API_VERSION, Condition, ConfigStatus, ObjectMeta, Resource, transition
from .models import Model, ModelSpec
from .pools import DeclaredGpus, ModelCache, NodeInfo, Pool, PoolSpec, PoolStatus, PoolType
from .providers import Price, Provider, ProviderModel, ProviderSpec, SecretRef
from .routes import RateLimits, Route, RouteSpec, Target
from .routing import DEFAULT_PRESET, FilterRef, PolicySpec, PresetName, ScorerRef
from .tenants import Budget, DeclaredKey, DeclaredKeySpec, Tenant, TenantSpec
from .usage import UsageRecord, UsageSink

__all__ = [
    "API_VERSION",
    "DEFAULT_PRESET",
    "KINDS",
    "PLURALS",
    "AnyResource",
    "ApiKey",
    "Budget",
    "Condition",
    "ConfigStatus",
    "DeclaredGpus",
    "DeclaredKey",
    "DeclaredKeySpec",
    "Deployment",
    "DeploymentSpec",
    "DeploymentStatus",
    "Endpoint",
    "EndpointSink",
    "FilterRef",
    "KeyLimits",
    "ManifestError",
    "Model",
    "ModelCache",
    "ModelSpec",
    "NodeInfo",
    "ObjectMeta",
    "PolicySpec",
    "Pool",
    "PoolSpec",
    "PoolStatus",
    "PoolType",
    "PresetName",
    "Price",
    "Problem",
    "Provider",
    "ProviderModel",
    "ProviderSpec",
    "PublishedEndpoints",
    "RateLimits",
    "Resource",
    "Resources",
    "Role",
    "RoleStatus",
    "Route",
    "RouteSpec",
    "ScorerRef",
    "SecretRef",
    "Target",
    "Tenant",
    "TenantSpec",
    "UsageRecord",
    "UsageSink",
    "hash_key",
    "key_id_of",
    "kind_from_user",
    "load_documents",
    "load_file",
    "load_text",
    "mint_key",
    "parse_resource",
    "transition",
]
