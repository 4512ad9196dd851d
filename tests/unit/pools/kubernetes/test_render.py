"""Every object the Kubernetes pool renders, validated strictly against the published schemas.

There is no API server here: core and apps objects are checked against the official Kubernetes
OpenAPI schemas (`kubernetes-validate`, Kubernetes 1.30, strict), LeaderWorkerSet and RoleBasedGroup
against their published CRDs (`tests/data/crds`); see `schemas.py`.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from computenet.api import PoolSpec
from computenet.pools import ReplicaSpec
from computenet.pools.kubernetes.names import object_name
from computenet.pools.kubernetes.render import render_manifests

from .schemas import validate

POOL = PoolSpec(type="kubernetes", namespace="llm", model_cache={"claim_name": "weights"})


def replica(name: str, role: str = "server", **kw: Any) -> ReplicaSpec:
    fields = {"engine": "vllm", "template_hash": "h1", "gpus": 1, "gpu_type": "NVIDIA-H100-80GB-HBM3", **kw}
    return ReplicaSpec(name, name.rsplit("-", 2)[0], role, served_name="llm", source="org/llm", **fields)


PD = [replica("pd-prefill-0", "prefill", node="n1"), replica("pd-decode-0", "decode", node="n2")]
SHAPES = {
    "single": [replica("chat-server-0", node="n1", cpu=8, memory_gb=64)],
    "multi-node": [replica("big-server-0", gpus=16, nodes=2, node="n1")],
    "pd-rbg": [*PD, replica("pd-router-0", "router", engine="sglang", gpus=0, gpu_type=None)],
    "sim": [replica("toy-server-0", engine="sim", gpus=0, gpu_type=None)],
}


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]
    if obj["kind"] == "LeaderWorkerSet":
        templates = spec["leaderWorkerTemplate"]
        return [templates["leaderTemplate"]["spec"], templates["workerTemplate"]["spec"]]
    if obj["kind"] == "RoleBasedGroup":
        return [role["template"]["spec"] for role in spec["roles"]]
    return [spec["template"]["spec"]] if "template" in spec else []


@pytest.mark.parametrize("rbg", [True, False], ids=["rbg", "statefulsets"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_rendered_object_is_valid_for_its_schema(shape: str, rbg: bool) -> None:
    objects = render_manifests(SHAPES[shape], "gpu-east", POOL, rbg=rbg)
    assert objects
    for obj in objects:
        validate(obj)
        assert obj["metadata"]["namespace"] == "llm"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "computenet"


def test_the_validation_rejects_what_an_api_server_would_not_take() -> None:
    """The checks can fail: an unknown field and a wrong enum value are caught, core and custom."""
    (deployment, _) = render_manifests(SHAPES["single"], "gpu-east", POOL, rbg=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy2"] = "Always"
    with pytest.raises(jsonschema.ValidationError):
        validate(deployment)
    (group, *_) = render_manifests(SHAPES["pd-rbg"], "gpu-east", POOL, rbg=True)
    group["spec"]["roles"][0]["restartPolicy"] = "Always"
    with pytest.raises(jsonschema.ValidationError):
        validate(group)
    (lws, _) = render_manifests(SHAPES["multi-node"], "gpu-east", POOL, rbg=True)
    lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["ports"][0][
        "containerPort"
    ] = "x"
    with pytest.raises(jsonschema.ValidationError):
        validate(lws)


def test_a_placed_replica_is_pinned_to_its_node_and_gpu_model() -> None:
    (deployment, _) = render_manifests(SHAPES["single"], "gpu-east", POOL, rbg=True)
    pod = deployment["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]},
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]},
    ]
    engine = pod["containers"][0]
    assert engine["resources"] == {
        "limits": {"nvidia.com/gpu": "1", "memory": "65536Mi"},
        "requests": {"cpu": "8000m", "memory": "65536Mi"},
    }
    assert engine["command"][:3] == ["vllm", "serve", "org/llm"]
    assert engine["command"][engine["command"].index("--host") + 1] == "0.0.0.0"
    assert {engine[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {
        "/health"
    }


def test_an_unplaced_replica_has_no_node_affinity() -> None:
    (deployment, _) = render_manifests(SHAPES["sim"], "gpu-east", POOL, rbg=True)
    pod = deployment["spec"]["template"]["spec"]
    assert "affinity" not in pod and "tolerations" not in pod
    assert pod["containers"][0]["command"][:3] == ["python3", "-m", "computenet.engines.sim"]


def test_weights_are_prefetched_into_the_cache_except_for_the_sim() -> None:
    (deployment, _) = render_manifests(SHAPES["single"], "gpu-east", POOL, rbg=True)
    pod = deployment["spec"]["template"]["spec"]
    (prefetch,) = pod["initContainers"]
    assert (
        prefetch["command"][-1] == "org/llm" and {"name": "HF_HOME", "value": "/models/hf"} in prefetch["env"]
    )
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "weights"}} in pod["volumes"]
    assert {"name": "model-cache", "mountPath": "/models"} in pod["containers"][0]["volumeMounts"]
    (toy, _) = render_manifests(SHAPES["sim"], "gpu-east", POOL, rbg=True)
    assert "initContainers" not in toy["spec"]["template"]["spec"]


def test_a_multi_node_replica_splits_its_gpus_over_a_leader_and_workers() -> None:
    (lws, _) = render_manifests(SHAPES["multi-node"], "gpu-east", POOL, rbg=True)
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2 and template["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = template["leaderTemplate"]["spec"], template["workerTemplate"]["spec"]
    assert leader["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "--pipeline-parallel-size 2" in leader["containers"][0]["command"][-1]
    assert "$(LWS_LEADER_ADDRESS)" in worker["containers"][0]["command"][-1]
    assert "readinessProbe" not in worker["containers"][0]  # only the leader serves
    worker_terms = worker["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [e["key"] for e in worker_terms["nodeSelectorTerms"][0]["matchExpressions"]] == [
        "nvidia.com/gpu.product"
    ]


def test_without_rbg_a_pd_group_is_statefulsets_behind_a_gate_and_services_per_role() -> None:
    objects = render_manifests(PD, "gpu-east", POOL, rbg=False)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert kinds == [
        ("StatefulSet", "pd-decode-0"),
        ("StatefulSet", "pd-prefill-0"),
        ("Service", "pd-decode"),
        ("Service", "pd-prefill"),
    ]
    assert objects[0]["spec"]["template"]["spec"]["schedulingGates"] == [
        {"name": "computenet.io/group-admission"}
    ]
    assert objects[3]["spec"]["selector"]["computenet.io/role"] == "prefill"
    ungated = render_manifests(PD, "gpu-east", POOL, rbg=False, gang_gates=False)
    assert "schedulingGates" not in ungated[0]["spec"]["template"]["spec"]


def test_a_multi_node_prefill_replica_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"pd-prefill-0.*resources.nodes: 1"):
        render_manifests([replica("pd-prefill-0", "prefill", gpus=16, nodes=2)], "gpu-east", POOL, rbg=True)


def test_object_names_are_valid_and_stable_however_long() -> None:
    long = "a" * 60 + "-server-12"
    assert len(object_name(long)) == 63 and object_name(long) == object_name(long)
    assert object_name(long) != object_name("a" * 60 + "-server-13")
    assert object_name("9lives", "server") == "cn-9lives-server"  # a Service name starts with a letter
