"""Strict schema validation of rendered Kubernetes objects, with no API server.

Core and apps objects are checked against the official Kubernetes OpenAPI schemas shipped by
`kubernetes-validate` (Kubernetes 1.30, the strict variant that rejects unknown fields); the
LeaderWorkerSet and RoleBasedGroup custom resources against their published CRDs in
`tests/data/crds` (see the README there for what the copies elide and why).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

KUBERNETES_VERSION = "1.30"
CRDS = Path(__file__).resolve().parents[3] / "data" / "crds"
_STRICT_DIR = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict"
_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.api.core.v1."
_OBJECT_META = (
    "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
)
CUSTOM_APIS = frozenset({"leaderworkerset.x-k8s.io/v1", "workloads.x-k8s.io/v1alpha1"})


def validate(obj: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` unless `obj` is valid for its apiVersion and kind."""
    api_version = obj["apiVersion"]
    if api_version in CUSTOM_APIS:
        _crd_validator(api_version, obj["kind"]).validate(obj)
        if obj["kind"] == "RoleBasedGroup":
            _check_rbg_rules(obj)
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _check_rbg_rules(obj: dict[str, Any]) -> None:
    """The CEL rule of RBG roles that `jsonschema` cannot run: exactly one of template and templateRef."""
    for role in obj["spec"]["roles"]:
        if ("template" in role) == ("templateRef" in role):
            raise jsonschema.ValidationError(f"role {role['name']}: template or templateRef must be set")


@functools.cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    group, version = api_version.split("/")
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["group"] != group or crd["spec"]["names"]["kind"] != kind:
            continue
        served = {v["name"]: v for v in crd["spec"]["versions"]}
        schema = _strict(served[version]["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = {"$ref": _OBJECT_META}  # the CRD leaves it to the API server
        return jsonschema.Draft202012Validator(schema, registry=_kubernetes_definitions())
    raise LookupError(f"no CRD in {CRDS} for {kind} in {api_version}")


def _strict(schema: Any) -> Any:
    """The CRD schema as JSON Schema: elided types resolved, unknown fields rejected."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "x-computenet-elided" in schema:
        return {"$ref": _DEFS + schema["x-computenet-elided"]}
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _kubernetes_definitions() -> Registry:  # type: ignore[type-arg]
    ref = resources.files(kubernetes_validate).joinpath(_STRICT_DIR, "_definitions.json")
    definitions = json.loads(ref.read_text())
    return Resource.from_contents(definitions) @ Registry()
