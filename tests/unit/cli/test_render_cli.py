"""`computenet render`: the manifests a kubernetes pool would run, printed for GitOps users.

No API server is involved: the printed objects are validated against the official Kubernetes and
published CRD schemas (see `tests/unit/pools/kubernetes/schemas.py`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from computenet.cli.main import main

from ..pools.kubernetes.schemas import validate

MANIFEST = """
apiVersion: computenet.io/v1
kind: Model
metadata: {name: chat}
spec: {source: org/chat, runtimes: [{engine: vllm}]}
---
apiVersion: computenet.io/v1
kind: Deployment
metadata: {name: chat}
spec:
  model: chat
  engine: vllm
  roles: [{name: server, replicas: 2, resources: {gpus: 1, gpuType: NVIDIA-H100-80GB-HBM3}}]
---
apiVersion: computenet.io/v1
kind: Deployment
metadata: {name: pd}
spec:
  model: chat
  engine: vllm
  roles: [{name: prefill, replicas: 1, resources: {gpus: 1}}, {name: decode, replicas: 2, resources: {gpus: 1}}]
---
apiVersion: computenet.io/v1
kind: Pool
metadata: {name: gpu-east}
spec: {type: kubernetes, region: us-east, namespace: llm, modelCache: {hostPath: /var/cache/models}}
---
apiVersion: computenet.io/v1
kind: Pool
metadata: {name: laptop}
spec: {type: local}
"""


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(MANIFEST)
    return path


def render(manifest: Path, *args: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(["render", "-f", str(manifest), *args])
    return int(exit_.value.code or 0)


def test_render_prints_valid_manifests_for_every_deployment(
    manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert render(manifest, "--pool", "gpu-east") == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    for obj in objects:
        validate(obj)
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Deployment", "chat-server-0"),
        ("Deployment", "chat-server-1"),
        ("RoleBasedGroup", "pd"),
        ("Service", "chat-server"),
        ("Service", "pd-decode"),
        ("Service", "pd-prefill"),
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {"llm"}


def test_render_without_rbg_prints_statefulsets_no_driver_would_need_to_ungate(
    manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert render(manifest, "--pool", "gpu-east", "--no-rbg") == 0
    sets = [o for o in yaml.safe_load_all(capsys.readouterr().out) if o["kind"] == "StatefulSet"]
    assert len(sets) == 3 and all("schedulingGates" not in s["spec"]["template"]["spec"] for s in sets)


@pytest.mark.parametrize(
    ("pool", "message"),
    [("gpu-west", "no Pool 'gpu-west' in"), ("laptop", "Pool 'laptop' is of type local")],
)
def test_render_names_an_unknown_or_non_kubernetes_pool(
    manifest: Path, capsys: pytest.CaptureFixture[str], pool: str, message: str
) -> None:
    assert render(manifest, "--pool", pool) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == "" and "Traceback" not in captured.err
