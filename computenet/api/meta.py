"""The envelope every resource shares: apiVersion, kind, metadata, spec, status.

Field names are camelCase on the wire (as in Kubernetes) and snake_case in Python;
`CamelModel` does the mapping once so that no schema repeats it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_VERSION = "computenet.io/v1"

# DNS-1123 label, as Kubernetes uses for object names: it ends up in process names,
# log file names, pod names and URLs, so it must be safe in all of them.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class CamelModel(BaseModel):
    """Base for every wire object: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ObjectMeta(CamelModel):
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Set by the store. A client that sends resourceVersion asks for an update only if the
    # stored object has not changed since it read it (409 otherwise).
    resource_version: int | None = None
    generation: int | None = None
    creation_timestamp: datetime | None = None


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(CamelModel):
    """One observed fact about a resource, in the shape of Kubernetes conditions."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: datetime | None = None


def transition(
    type_: str, ok: bool, reason: str, message: str, previous: Sequence[Condition], now: datetime
) -> Condition:
    """The condition `type_` as observed now; it keeps its lastTransitionTime while its status holds."""
    status: ConditionStatus = "True" if ok else "False"
    before = next((c for c in previous if c.type == type_), None)
    since = before.last_transition_time if before and before.status == status else now
    return Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=since)


class ConfigStatus(CamelModel):
    """Status of a kind that is configuration only (Route, Provider): is it in use as declared?"""

    conditions: list[Condition] = Field(default_factory=list)


class Resource(CamelModel):
    """Common envelope; each kind narrows `kind`, `spec` and `status`."""

    api_version: Literal["computenet.io/v1"] = "computenet.io/v1"
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_wire(self) -> dict[str, object]:
        """The JSON/YAML shape users see: camelCase, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
