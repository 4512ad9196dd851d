"""How a Route or Deployment asks the gateway to pick a replica: a preset name, or a pipeline.

    policy: precise-prefix                      # a preset
    policy:                                     # or a pipeline, optionally on top of a preset
      preset: prefix
      filters: [{name: saturation, maxWaiting: 32}, {name: region, region: us-east}]
      scorers: [{name: prefix, weight: 2}, {name: queue, weight: 1}]
      picker: max

The names are listed here so a typo fails at apply time; the gateway's
`computenet.gateway.routing.presets` builds them (a test keeps the two in step).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic.alias_generators import to_camel

from .meta import CamelModel

PresetName = Literal["random", "round-robin", "least-request", "power-of-two", "prefix", "precise-prefix"]
FilterName = Literal["saturation", "region"]
ScorerName = Literal[
    "least-request",
    "queue",
    "kv-usage",
    "prefix",
    "precise-prefix",
    "prefill-load",
    "lora",
    "session",
    "region",
]
PickerName = Literal["max", "random", "round-robin", "power-of-two"]
DEFAULT_PRESET: PresetName = "precise-prefix"

# Names of earlier releases, still accepted.
LEGACY_PRESETS = {"round_robin": "round-robin", "least_outstanding": "least-request"}

_FILTER_PARAMS = {
    "saturation": {"max_waiting", "max_kv_usage", "max_in_flight"},
    "region": {"region", "spill", "max_waiting", "max_kv_usage", "max_in_flight"},  # room before spilling
}


class FilterRef(CamelModel):
    name: FilterName
    # saturation: past these an endpoint is turned away; region: past these the region spills over
    max_waiting: float | None = Field(default=None, gt=0, description="engine queue length")
    max_kv_usage: float | None = Field(default=None, gt=0, le=1, description="KV-cache fraction")
    max_in_flight: float | None = Field(default=None, gt=0, description="this gateway's requests")
    region: str | None = Field(default=None, min_length=1, description="region: the preferred region")
    spill: bool | None = Field(default=None, description="region: use other regions when none is left")

    @model_validator(mode="after")
    def _params_fit_the_filter(self) -> FilterRef:
        allowed = _FILTER_PARAMS[self.name]
        extra = sorted(k for k in type(self).model_fields if k != "name" and getattr(self, k) is not None)
        wrong = [k for k in extra if k not in allowed]
        if wrong:
            takes = ", ".join(sorted(to_camel(k) for k in allowed))
            raise ValueError(f"filter {self.name!r} takes {takes}; remove {', '.join(map(to_camel, wrong))}")
        return self

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"name"}).items() if v is not None}


class ScorerRef(CamelModel):
    name: ScorerName
    weight: float = Field(default=1.0, ge=0, description="its share of the total score")
    region: str | None = Field(default=None, min_length=1, description="region: the preferred region")

    @model_validator(mode="after")
    def _params_fit_the_scorer(self) -> ScorerRef:
        if self.region is not None and self.name != "region":
            raise ValueError(f"scorer {self.name!r} takes no `region`; only the `region` scorer does")
        return self

    def params(self) -> dict[str, Any]:
        return {"region": self.region} if self.region is not None else {}


class PolicySpec(CamelModel):
    """`policy: NAME` is read as `policy: {preset: NAME}`; earlier releases' names are still accepted."""

    preset: PresetName | None = Field(default=None, description="start from this preset")
    filters: list[FilterRef] | None = Field(default=None, description="replace the preset's filters")
    scorers: list[ScorerRef] | None = Field(default=None, description="replace the preset's scorers")
    picker: PickerName | None = Field(default=None, description="replace the preset's picker")

    @model_validator(mode="before")
    @classmethod
    def _a_name_is_a_preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"preset": LEGACY_PRESETS.get(value, value)}
        if isinstance(value, dict) and isinstance(value.get("preset"), str):
            return {**value, "preset": LEGACY_PRESETS.get(value["preset"], value["preset"])}
        return value

    @property
    def custom(self) -> bool:
        return self.filters is not None or self.scorers is not None or self.picker is not None
