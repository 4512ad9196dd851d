"""A Kubernetes Node object as the scheduler's `NodeInfo`. Pure.

GPUs are the node's allocatable `nvidia.com/gpu` (what the device plugin offers, so GPUs it marks
unhealthy are already left out); their model and memory come from the labels NVIDIA's GPU feature
discovery sets (`nvidia.com/gpu.product`, `nvidia.com/gpu.memory` in MiB, `nvidia.com/gpu.count`).
The GPU model is the product label as GFD writes it (`NVIDIA-H100-80GB-HBM3`): that is what a
Deployment's `gpuType` names on a Kubernetes pool, and what its pods' node affinity matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from computenet.api import NodeInfo

REGION = "topology.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"
GPU = "nvidia.com/gpu"
GPU_PRODUCT = "nvidia.com/gpu.product"
GPU_MEMORY_MIB = "nvidia.com/gpu.memory"
GPU_COUNT = "nvidia.com/gpu.count"


def node_info(node: Mapping[str, Any], pool_labels: Mapping[str, str] | None = None) -> NodeInfo:
    meta, status = node.get("metadata") or {}, node.get("status") or {}
    labels = {**(meta.get("labels") or {}), **(pool_labels or {})}
    allocatable = status.get("allocatable") or {}
    gpus = int(quantity(allocatable.get(GPU, "0")))
    declared = int(quantity(labels.get(GPU_COUNT, "0")))
    return NodeInfo(
        name=meta["name"],
        ready=is_ready(node) and not (node.get("spec") or {}).get("unschedulable", False),
        cpu=quantity(allocatable.get("cpu", "0")),
        memory_gb=round(quantity(allocatable.get("memory", "0")) / 2**30, 1),
        gpus=gpus,
        gpu_type=labels.get(GPU_PRODUCT, "") if gpus else "",
        gpu_memory_gb=round(quantity(labels.get(GPU_MEMORY_MIB, "0")) / 1024, 1) if gpus else 0.0,
        # GPUs GFD counts on the node but the device plugin does not offer are unhealthy; which ones is
        # not said, so the last indices stand for them.
        unhealthy_gpus=list(range(gpus, declared)),
        labels=labels,
        taints=[_taint(t) for t in (node.get("spec") or {}).get("taints") or []],
        address=_internal_ip(status),
    )


def is_ready(node: Mapping[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _taint(taint: Mapping[str, str]) -> str:
    """`key=value:Effect`, as kubectl prints it (`key:Effect` without a value)."""
    value = taint.get("value")
    return f"{taint['key']}{'=' + value if value else ''}:{taint['effect']}"


def _internal_ip(status: Mapping[str, Any]) -> str:
    addresses = status.get("addresses") or []
    by_type = {a.get("type"): a.get("address", "") for a in addresses}
    return str(by_type.get("InternalIP") or by_type.get("Hostname") or "")


_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "m": 1e-3,
}  # fmt: skip


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (`3800m`, `16Gi`, `8`) as a number; 0 for what cannot be read."""
    value = str(text).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if value.endswith(suffix):
            number, scale = value[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, scale = value, 1
    try:
        return float(number) * scale
    except ValueError:
        return 0.0
