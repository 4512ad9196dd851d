"""deploy/: every manifest is valid for Kubernetes 1.30 (the official OpenAPI schemas, strict: unknown
fields rejected), and what the manifests hand to ComputeNet is valid for ComputeNet: the commands'
flags parse, the ConfigMap's resources load, every Secret key referenced is in the example Secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from computenet.api import Pool, load_text
from computenet.cli.main import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.30"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((f"{path.relative_to(DEPLOY)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


DOCUMENTS = _documents()


def _containers(kind: str) -> list[dict[str, Any]]:
    return [c for _, d in DOCUMENTS if d["kind"] == kind for c in d["spec"]["template"]["spec"]["containers"]]


def test_the_folder_holds_what_a_cluster_needs() -> None:
    kinds = sorted({d["kind"] for _, d in DOCUMENTS})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Namespace",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    control = next(
        d for _, d in DOCUMENTS if d["kind"] == "Deployment" and d["metadata"]["name"] == "computenet-control"
    )
    assert control["spec"]["replicas"] == 2


@pytest.mark.parametrize(("where", "doc"), DOCUMENTS, ids=[where for where, _ in DOCUMENTS])
def test_every_manifest_is_valid_for_kubernetes(where: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_misspelt_field_is_caught() -> None:
    """The check above can fail: strict schemas reject a field Kubernetes does not know."""
    (_, service), *_ = [(w, d) for w, d in DOCUMENTS if d["kind"] == "Service"]
    broken = {**service, "spec": {**service["spec"], "selectr": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_container_runs_computenet_with_flags_it_accepts() -> None:
    parser = build_parser()
    commands = []
    for container in _containers("Deployment"):
        args = parser.parse_args(container["args"])
        commands.append(args.command)
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert sorted(commands) == ["control", "gateway"]


def test_the_control_plane_elects_a_leader_and_the_gateways_follow_it() -> None:
    parser = build_parser()
    args = {
        parser.parse_args(c["args"]).command: parser.parse_args(c["args"]) for c in _containers("Deployment")
    }
    assert args["control"].leader_elect
    service = next(
        d for _, d in DOCUMENTS if d["kind"] == "Service" and d["metadata"]["name"] == "computenet-control"
    )
    assert (
        args["gateway"].control
        == f"http://computenet-control.computenet.svc:{service['spec']['ports'][0]['port']}"
    )


def test_the_config_map_holds_valid_pools() -> None:
    (config,) = [d for _, d in DOCUMENTS if d["kind"] == "ConfigMap"]
    (pool,) = load_text(config["data"]["pools.yaml"], source="pools.yaml")
    assert isinstance(pool, Pool) and pool.spec.type == "kubernetes" and pool.spec.kubeconfig is None


def test_every_secret_key_referenced_is_in_the_example_secret() -> None:
    (secret,) = [d for _, d in DOCUMENTS if d["kind"] == "Secret"]
    refs = {
        (env["valueFrom"]["secretKeyRef"]["name"], env["valueFrom"]["secretKeyRef"]["key"])
        for container in _containers("Deployment")
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert refs == {(secret["metadata"]["name"], key) for key in secret["stringData"]}


def test_the_image_runs_as_a_non_root_user_with_the_extras_it_needs() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM python:3.11-slim\n" in dockerfile
    extras = re.search(r'pip install "\.\[([a-z,-]+)\]"', dockerfile)
    assert extras and {"postgres", "kubernetes", "ray"} <= set(extras.group(1).split(","))
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("0", "root")
    pods = [d["spec"]["template"]["spec"] for _, d in DOCUMENTS if d["kind"] == "Deployment"]
    assert {pod["securityContext"]["runAsUser"] for pod in pods} == {int(user[-1])}
