"""The `Pool` kind: a place that runs replicas, and the nodes it reports.

A pool is this machine (`local`), a Ray cluster reached by address (`ray`), or a Kubernetes
cluster reached through a kubeconfig context (`kubernetes`). Each sits in one region and zone;
the scheduler sees every pool's nodes as one inventory labelled with them, and the gateway
prefers replicas in its own region.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .meta import CamelModel, Condition, Resource

PoolType = Literal["local", "ray", "kubernetes"]


class DeclaredGpus(CamelModel):
    """GPUs a `local` pool announces for `sim`, which needs none: a laptop can rehearse placement."""

    type: str = Field(min_length=1, description="GPU model, e.g. H100")
    count: int = Field(ge=1)
    memory_gb: float = Field(default=80.0, gt=0)


class ModelCache(CamelModel):
    """Where a `kubernetes` pool keeps model weights across pod restarts, so a restart does not download them
    again: an existing PersistentVolumeClaim (shared by every replica: ReadWriteMany, or ReadOnlyMany when
    something else fills it) or a directory on each node (hostPath: each node downloads once)."""

    claim_name: str | None = Field(default=None, min_length=1, description="a PersistentVolumeClaim's name")
    host_path: str | None = Field(default=None, pattern=r"^/", description="a directory on every node")
    mount_path: str = Field(default="/models", pattern=r"^/", description="where pods see the cache")

    @model_validator(mode="after")
    def _one_source(self) -> ModelCache:
        if (self.claim_name is None) == (self.host_path is None):
            raise ValueError("spec.modelCache takes one of claimName (a PVC) or hostPath (a node directory)")
        return self


class PoolSpec(CamelModel):
    type: PoolType = "local"
    region: str = Field(default="local", min_length=1)
    zone: str = Field(default="local", min_length=1)
    address: str | None = Field(
        default=None,
        description="ray: the cluster's GCS address, host:port (as given to `ray start --address`)",
    )
    kubeconfig: str | None = Field(
        default=None, description="kubernetes: path of the kubeconfig file; empty: in-cluster config"
    )
    context: str | None = Field(default=None, description="kubernetes: the kubeconfig context to use")
    namespace: str = Field(default="default", min_length=1, description="kubernetes: where replicas run")
    price_per_gpu_hour: dict[str, float] = Field(
        default_factory=dict, description="GPU model -> price per GPU-hour, for cost-aware placement"
    )
    gpus: list[DeclaredGpus] = Field(default_factory=list, description="local: simulated GPUs for `sim`")
    labels: dict[str, str] = Field(default_factory=dict, description="added to every node of the pool")
    # Kubernetes pods need an image and somewhere to keep weights; local and Ray pools run on hosts that
    # already have both.
    image: str | None = Field(
        default=None, min_length=1, description="kubernetes: the engine's container image; default per engine"
    )
    model_cache: ModelCache | None = Field(
        default=None, description="kubernetes: a volume for model weights, mounted in every replica's pod"
    )

    @model_validator(mode="after")
    def _fields_fit_type(self) -> PoolSpec:
        if self.type == "ray" and not self.address:
            raise ValueError("a ray pool needs spec.address: the head's GCS address, e.g. 10.0.0.5:6379")
        if self.type != "ray" and self.address:
            raise ValueError(f"spec.address is for ray pools; a {self.type} pool takes no address")
        if self.type != "kubernetes" and (self.kubeconfig or self.context):
            raise ValueError(f"spec.kubeconfig and spec.context are for kubernetes pools, not {self.type}")
        if self.type != "kubernetes" and (self.image or self.model_cache):
            raise ValueError(f"spec.image and spec.modelCache are for kubernetes pools, not {self.type}")
        if self.type != "local" and self.gpus:
            raise ValueError(
                f"spec.gpus declares simulated GPUs of a local pool; a {self.type} pool reports its own"
            )
        bad = {gpu: price for gpu, price in self.price_per_gpu_hour.items() if price < 0}
        if bad:
            raise ValueError(f"spec.pricePerGpuHour must be >= 0, got {bad}")
        return self


class NodeInfo(CamelModel):
    """One node as its pool reports it: what the scheduler places onto, and what `get pools` shows."""

    name: str
    ready: bool = True
    cpu: float = Field(default=0.0, ge=0, description="allocatable cores")
    memory_gb: float = Field(default=0.0, ge=0)
    gpus: int = Field(default=0, ge=0)
    gpu_type: str = ""
    gpu_memory_gb: float = Field(default=0.0, ge=0)
    unhealthy_gpus: list[int] = Field(default_factory=list, description="indices the pool reports bad")
    nvlink_island_size: int = Field(default=0, ge=0, description="GPUs per NVLink island; 0: all one")
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[str] = Field(default_factory=list, description="key=value:Effect, as kubectl prints them")
    address: str = Field(default="", description="where replicas on this node are reached (IP or host)")


class PoolStatus(CamelModel):
    replicas: int = 0
    nodes: int = 0
    ready_nodes: int = 0
    gpus: int = 0
    conditions: list[Condition] = Field(default_factory=list)


class Pool(Resource):
    kind: Literal["Pool"] = "Pool"
    spec: PoolSpec = Field(default_factory=PoolSpec)
    status: PoolStatus | None = None
