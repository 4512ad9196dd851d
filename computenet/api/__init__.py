"""Resource schemas (pydantic), YAML loading and validation errors. Imports nothing of ours."""

from .deployments import Deployment, DeploymentSpec, DeploymentStatus, Resources, Role, RoleStatus
from .endpoints import Endpoint, EndpointSink
from .keys import ApiKey, KeyLimits, hash_key, key_id_of, mint_key
from .kinds import KINDS, PLURALS, AnyResource, kind_from_user
from .loading import ManifestError, Problem, load_documents, load_file, load_text, parse_resource
from .meta import API_VERSION, Condition, ObjectMeta, Resource
from .models import Model, ModelSpec
from .pools import Pool, PoolSpec, PoolStatus
from .usage import UsageRecord, UsageSink

__all__ = [
    "API_VERSION",
    "KINDS",
    "PLURALS",
    "AnyResource",
    "ApiKey",
    "Condition",
    "Deployment",
    "DeploymentSpec",
    "DeploymentStatus",
    "Endpoint",
    "EndpointSink",
    "KeyLimits",
    "ManifestError",
    "Model",
    "ModelSpec",
    "ObjectMeta",
    "Pool",
    "PoolSpec",
    "PoolStatus",
    "Problem",
    "Resource",
    "Resources",
    "Role",
    "RoleStatus",
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
]
