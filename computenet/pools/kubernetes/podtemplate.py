"""One replica's pod template: the engine container, its probes, GPUs, placement and model cache. Pure.

The engine command is the one the local pool runs (`render_launch`), listening on 0.0.0.0 inside the
pod. Placement is ComputeNet's: the scheduler already chose the node, so the pod is pinned to it by
required node affinity on `kubernetes.io/hostname` (and to the GPU model by `nvidia.com/gpu.product`,
the label GPU feature discovery sets); kube-scheduler only confirms the fit. Which GPUs of the node a
pod gets is the device plugin's choice: `nvidia.com/gpu` limits count them, the scheduler's GPU ids
are not enforced here.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from computenet import __version__
from computenet.api import PoolSpec
from computenet.engines import get_engine
from computenet.engines.base import weights_ref

from ..base import ReplicaSpec
from ..local import render_launch
from .names import GATE, MEMBER, PORT, SPEC_ANNOTATION, replica_labels, spec_to_json

Manifest = dict[str, Any]

DEFAULT_IMAGES: Mapping[str, str] = {
    "vllm": "vllm/vllm-openai:latest",
    "sglang": "lmsysorg/sglang:latest",
    "sim": f"computenet/computenet:{__version__}",  # the sim needs only ComputeNet itself
}
CACHE_VOLUME = "model-cache"
HF_SUBDIR = "hf"  # HF_HOME under the cache: where hub downloads land and engines look for them
STARTUP_BUDGET_S = 1800  # a large model can take this long to load before its health path answers


def engine_argv(spec: ReplicaSpec) -> tuple[list[str], dict[str, str]]:
    """The engine's command and environment, as the local pool renders them, for a pod on 0.0.0.0:PORT."""
    launch = render_launch(replace(spec, gpu_ids=()), "0.0.0.0", (PORT, 0, 0), kv_events=False)
    argv = list(launch.argv)
    if argv and argv[0] == sys.executable:  # python engines run under this interpreter locally
        argv[0] = "python3"
    return argv, dict(launch.env or {})


def image_for(spec: ReplicaSpec, pool: PoolSpec) -> str:
    return pool.image or DEFAULT_IMAGES.get(spec.engine, DEFAULT_IMAGES["sim"])


def pod_template(
    spec: ReplicaSpec,
    pool_name: str,
    pool: PoolSpec,
    *,
    argv: Sequence[str] | None = None,
    member: str | None = None,
    gated: bool = False,
    extra_env: Mapping[str, str] | None = None,
) -> Manifest:
    """The PodTemplateSpec for `spec` (or, with `member`, for one pod of a multi-node replica).

    `argv` replaces the engine's own command (a multi-node worker); only the pod that serves (the
    leader, or the only pod) gets health probes and the weight prefetch. `gated` adds the scheduling
    gate a prefill/decode group's pods wait behind until the driver admits the whole group.
    """
    serves = member in (None, "leader")
    command, env = engine_argv(spec)
    labels = replica_labels(spec, pool_name) | ({MEMBER: member} if member else {})
    container: Manifest = {
        "name": "engine",
        "image": image_for(spec, pool),
        "command": list(argv) if argv is not None else command,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": _env({**env, **_cache_env(pool), **(extra_env or {})}),
        "resources": _resources(spec),
        "volumeMounts": _mounts(spec, pool),
    }
    if serves:
        container |= _probes(get_engine(spec.engine).health_path)
    pod: Manifest = {
        "containers": [container],
        "volumes": _volumes(spec, pool),
        "enableServiceLinks": False,  # hundreds of Services would otherwise become env vars
        "terminationGracePeriodSeconds": 30,
    }
    if affinity := _node_affinity(spec):
        pod["affinity"] = affinity
    if spec.gpus:  # GPU nodes are commonly tainted so that nothing else lands there
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    prefetch = prefetch_command(spec, pool)
    if serves and prefetch is not None:
        pod["initContainers"] = [_prefetch_container(spec, pool, prefetch)]
    if gated:
        pod["schedulingGates"] = [{"name": GATE}]
    if not pod["volumes"]:
        del pod["volumes"], container["volumeMounts"]
    annotations = {SPEC_ANNOTATION: spec_to_json(spec)}
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod}


def gpus_per_pod(spec: ReplicaSpec) -> int:
    return spec.gpus // spec.nodes if spec.nodes > 1 else spec.gpus


def _resources(spec: ReplicaSpec) -> Manifest:
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if gpus := gpus_per_pod(spec):
        limits["nvidia.com/gpu"] = str(gpus)
    if spec.cpu is not None:
        requests["cpu"] = f"{round(spec.cpu * 1000)}m"
    if spec.memory_gb is not None:
        requests["memory"] = limits["memory"] = f"{round(spec.memory_gb * 1024)}Mi"
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def _probes(health_path: str) -> Manifest:
    """Startup waits out weight loading; then readiness gates traffic and liveness restarts a hung engine."""

    def probe(period_s: int, failures: int) -> Manifest:
        http = {"path": health_path, "port": "http"}
        return {"httpGet": http, "timeoutSeconds": 2, "periodSeconds": period_s, "failureThreshold": failures}

    return {
        "startupProbe": probe(10, STARTUP_BUDGET_S // 10),
        "readinessProbe": probe(5, 3),
        "livenessProbe": probe(10, 6),
    }


def _node_affinity(spec: ReplicaSpec) -> Manifest | None:
    terms = []
    if spec.node:
        terms.append({"key": "kubernetes.io/hostname", "operator": "In", "values": [spec.node]})
    if spec.gpu_type:
        terms.append({"key": "nvidia.com/gpu.product", "operator": "In", "values": [spec.gpu_type]})
    if not terms:
        return None
    required = {"nodeSelectorTerms": [{"matchExpressions": terms}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


def _volumes(spec: ReplicaSpec, pool: PoolSpec) -> list[Manifest]:
    volumes: list[Manifest] = []
    cache = pool.model_cache
    if cache is not None and cache.claim_name:
        volumes.append({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache.claim_name}})
    elif cache is not None and cache.host_path:
        host_path = {"path": cache.host_path, "type": "DirectoryOrCreate"}
        volumes.append({"name": CACHE_VOLUME, "hostPath": host_path})
    if spec.gpus and spec.engine != "sim":  # NCCL and the engines' workers share tensors through /dev/shm
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    return volumes


def _mounts(spec: ReplicaSpec, pool: PoolSpec) -> list[Manifest]:
    mounts = []
    if pool.model_cache is not None:
        mounts.append({"name": CACHE_VOLUME, "mountPath": pool.model_cache.mount_path})
    if spec.gpus and spec.engine != "sim":
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts


def _cache_env(pool: PoolSpec) -> dict[str, str]:
    if pool.model_cache is None:
        return {}
    return {"HF_HOME": f"{pool.model_cache.mount_path}/{HF_SUBDIR}"}


def _env(values: Mapping[str, str]) -> list[Manifest]:
    return [{"name": key, "value": value} for key, value in sorted(values.items())]


def prefetch_command(spec: ReplicaSpec, pool: PoolSpec) -> list[str] | None:
    """A command that puts the model's files in the cache before the engine starts, or None if none is needed.

    Hub models are downloaded into the cache (HF_HOME), where the engine then finds them; a local path is
    read once so its files are in the node's page cache. The `sim` reads no weights (whatever its source
    says), and without a cache volume a download would be lost with the init container: no prefetch.
    """
    source = spec.source
    if spec.engine == "sim" or source.startswith("sim://") or pool.model_cache is None:
        return None
    if source.startswith("/"):
        return ["sh", "-c", 'find "$0" -type f -exec cat {} + > /dev/null', source]
    if source.startswith("modelscope://"):
        script = "import sys; from modelscope import snapshot_download; snapshot_download(sys.argv[1])"
        return ["python3", "-c", script, source.removeprefix("modelscope://")]
    script = "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1])"
    return ["python3", "-c", script, weights_ref(source)]


def _prefetch_container(spec: ReplicaSpec, pool: PoolSpec, command: list[str]) -> Manifest:
    return {
        "name": "prefetch-weights",
        "image": image_for(spec, pool),  # the engine's image has the hub clients the engine itself uses
        "command": command,
        "env": _env(_cache_env(pool)),
        "volumeMounts": _mounts(spec, pool)[:1],
    }
