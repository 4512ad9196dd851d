"""A Ray cluster's nodes as the scheduler sees them. Pure: a `ray.nodes()` entry in, a `NodeInfo` out.

Naming: a node is named by its Ray node id (hex). It is the one identifier that is unique in a cluster
(several raylets may share an IP; `NodeName` defaults to the IP) and that `NodeAffinitySchedulingStrategy`
takes as is, so the node the scheduler picks is exactly the node the actor lands on. A raylet that
restarts on the same machine is a new node with a new id; its replicas were lost with the old one.

GPUs: Ray counts them in the `GPU` resource and names their model only through an
`accelerator_type:<MODEL>` resource (set by Ray's GPU autodetection, or by `--resources` by hand).
Ray does not report GPU memory; it comes from the sim catalogue's entry for that model (the same ids
Ray uses: H100, A100-80G, A10G, L4 ...), or from the node label `computenet.io/gpu-memory-gb`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from computenet.api import NodeInfo

ACCELERATOR_PREFIX = "accelerator_type:"
GPU_MEMORY_LABEL = "computenet.io/gpu-memory-gb"
GIB = 2**30


def node_info(raw: Mapping[str, Any], gpu_memory_gb: Mapping[str, float]) -> NodeInfo:
    """One entry of `ray.nodes()` as a NodeInfo; `gpu_memory_gb` maps GPU model -> memory per GPU."""
    resources: Mapping[str, float] = raw.get("Resources") or {}
    labels = {str(k): str(v) for k, v in (raw.get("Labels") or {}).items()}
    gpus = int(resources.get("GPU", 0))
    gpu_type = gpu_model(resources) if gpus else ""
    return NodeInfo(
        name=str(raw["NodeID"]),
        ready=bool(raw.get("Alive", False)),
        cpu=float(resources.get("CPU", 0.0)),
        memory_gb=round(float(resources.get("memory", 0.0)) / GIB, 1),
        gpus=gpus,
        gpu_type=gpu_type,
        gpu_memory_gb=_gpu_memory(labels, gpu_type, gpu_memory_gb),
        labels=labels,
        address=str(raw.get("NodeManagerAddress", "")),
    )


def gpu_model(resources: Mapping[str, float]) -> str:
    """The GPU model from `accelerator_type:<MODEL>`; "" when the node declares none.

    A node has one GPU model (Ray's autodetection reports one); if several are declared by hand the
    first in sorted order is taken, so the answer does not depend on dict order.
    """
    models = sorted(
        key.removeprefix(ACCELERATOR_PREFIX) for key in resources if key.startswith(ACCELERATOR_PREFIX)
    )
    return models[0] if models else ""


def _gpu_memory(labels: Mapping[str, str], gpu_type: str, known: Mapping[str, float]) -> float:
    declared = labels.get(GPU_MEMORY_LABEL)
    if declared is not None:
        try:
            return max(float(declared), 0.0)
        except ValueError:
            pass  # a malformed label is ignored rather than hiding the whole node
    return known.get(gpu_type, 0.0)
