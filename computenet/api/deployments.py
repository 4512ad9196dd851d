"""The `Deployment` kind: a model served with a shape (roles, replicas, resources, engine)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .meta import CamelModel, Condition, Resource
from .models import EngineName
from .routing import PolicySpec

RoleName = Literal["server", "prefill", "decode", "router"]
EngineArgs = dict[str, str | int | float | bool | list[str]]

# The role sets a deployment may have: one aggregated server, or a disaggregated
# prefill/decode group with an optional router in front of it.
ALLOWED_ROLE_SETS = (
    frozenset({"server"}),
    frozenset({"prefill", "decode"}),
    frozenset({"prefill", "decode", "router"}),
)


class Resources(CamelModel):
    """What one replica of a role needs."""

    gpus: int = Field(default=0, ge=0)
    gpu_type: str | None = None
    gpu_memory_gb: float | None = Field(default=None, gt=0)
    cpu: float | None = Field(default=None, gt=0)
    memory_gb: float | None = Field(default=None, gt=0)
    # A model too big for one node runs tensor-parallel across several (a LeaderWorkerSet on Kubernetes):
    # `gpus` is then the replica's total, split evenly over `nodes`.
    nodes: int = Field(default=1, ge=1, description="nodes one replica spans; gpus must divide evenly")

    @model_validator(mode="after")
    def _gpus_split_over_nodes(self) -> Resources:
        if self.nodes > 1 and (self.gpus == 0 or self.gpus % self.nodes):
            raise ValueError(
                f"resources.gpus ({self.gpus}) must be a multiple of resources.nodes ({self.nodes}): "
                "each node of a multi-node replica runs the same number of GPUs"
            )
        return self


class Role(CamelModel):
    name: RoleName = "server"
    replicas: int = Field(default=1, ge=0)
    resources: Resources = Field(default_factory=Resources)
    engine_args: EngineArgs = Field(default_factory=dict, description="merged over the deployment's")


class SpreadSpec(CamelModel):
    """Keep replicas of each role apart, as Kubernetes' topology spread with DoNotSchedule does."""

    key: Literal["node", "zone", "region"] = "node"
    max_skew: int = Field(default=1, ge=1, description="most replicas a domain may hold over the emptiest")


class Placement(CamelModel):
    pools: list[str] = Field(default_factory=list, description="pool names allowed; empty: any")
    regions: list[str] = Field(default_factory=list, description="regions allowed; empty: any")
    policy: Literal["utilization", "stability", "cost"] = Field(
        default="utilization",
        description="scheduler preset: pack against fragmentation, spread for stability, or cheapest GPUs",
    )
    spread: SpreadSpec | None = Field(
        default=None, description="hard spread of each role's replicas, so one node's loss leaves others"
    )


class RestartPolicy(CamelModel):
    """Exponential backoff between restarts of a replica that died, as a kubelet does."""

    initial_backoff_s: float = Field(default=0.5, gt=0)
    max_backoff_s: float = Field(default=30.0, gt=0)


class Routing(CamelModel):
    policy: PolicySpec = Field(default_factory=PolicySpec, description="a preset name, or a pipeline")


class DeploymentSpec(CamelModel):
    model: str = Field(min_length=1, description="name of the Model this deployment serves")
    engine: EngineName
    engine_args: EngineArgs = Field(default_factory=dict)
    roles: list[Role] = Field(default_factory=lambda: [Role()], min_length=1)
    placement: Placement = Field(default_factory=Placement)
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    routing: Routing = Field(default_factory=Routing)

    @field_validator("roles")
    @classmethod
    def _role_set_is_known(cls, roles: list[Role]) -> list[Role]:
        names = [role.name for role in roles]
        if len(set(names)) != len(names):
            raise ValueError(f"role names must be unique, got {names}")
        if frozenset(names) not in ALLOWED_ROLE_SETS:
            raise ValueError(f"roles must be [server] or [prefill, decode] (+ router), got {names}")
        return roles


class RoleStatus(CamelModel):
    name: RoleName
    replicas: int = 0
    ready_replicas: int = 0


class DeploymentStatus(CamelModel):
    observed_generation: int = 0
    replicas: int = 0
    ready_replicas: int = 0
    roles: list[RoleStatus] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)


class Deployment(Resource):
    kind: Literal["Deployment"] = "Deployment"
    spec: DeploymentSpec
    status: DeploymentStatus | None = None

    @property
    def desired_replicas(self) -> int:
        return sum(role.replicas for role in self.spec.roles)
