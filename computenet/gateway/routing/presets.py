"""Named routing presets, and building a `Pipeline` from a Route's or Deployment's `policy`.

The presets are the policies the benchmarks compare (docs/benchmarks.md):

* `random`, `round-robin`: blind baselines.
* `least-request`: fewest requests this gateway has in flight (ties at random).
* `power-of-two`: the same count, over two endpoints drawn at random.
* `prefix`: approximate prefix affinity (the prompt blocks this gateway routed to each
  endpoint) balanced by load, as SGLang's cache-aware router does it.
* `precise-prefix`: the blocks the engines report holding (KV events), balanced by the
  prefill work queued ahead of the prompt (`prefill-load`, which prices the same hits
  and the queue in tokens) and the engines' KV usage. The default: with no KV events it
  is a load-aware policy, and loses nothing. The weights were chosen on the Mooncake
  trace (docs/benchmarks.md, "SLO capacity").
"""

from __future__ import annotations

from dataclasses import dataclass

from computenet.api import DEFAULT_PRESET, FilterRef, PolicySpec, PresetName, ScorerRef

from .pipeline import PICKERS, Pipeline
from .scorers import FILTERS, SCORERS, RegionFilter


@dataclass(frozen=True)
class Preset:
    filters: tuple[FilterRef, ...] = ()
    scorers: tuple[ScorerRef, ...] = ()
    picker: str = "max"


def _scorers(**weights: float) -> tuple[ScorerRef, ...]:
    return tuple(
        ScorerRef.model_validate({"name": n.replace("_", "-"), "weight": w}) for n, w in weights.items()
    )


PRESETS: dict[str, Preset] = {
    "random": Preset(picker="random"),
    "round-robin": Preset(picker="round-robin"),
    "least-request": Preset(scorers=_scorers(least_request=1)),
    "power-of-two": Preset(scorers=_scorers(least_request=1), picker="power-of-two"),
    "prefix": Preset(scorers=_scorers(prefix=2, least_request=1)),
    "precise-prefix": Preset(scorers=_scorers(precise_prefix=3, prefill_load=2, kv_usage=1)),
}


def build_pipeline(policy: PolicySpec | str | None = None, *, region: str | None = None) -> Pipeline:
    """A fresh pipeline (its own round-robin turn) for `policy`; the default preset when None.

    `region`: the gateway's own. Every pipeline then ends with a `region` filter (unless the policy
    places one itself), so that requests stay in the gateway's region and spill over when it is full.
    """
    spec = policy if isinstance(policy, PolicySpec) else PolicySpec.model_validate(policy or DEFAULT_PRESET)
    preset_name: PresetName = spec.preset or DEFAULT_PRESET
    preset = PRESETS[preset_name]
    refs = spec.filters if spec.filters is not None else preset.filters
    filters = [FILTERS[f.name](**f.params()) for f in refs]
    if region and not any(f.name == "region" for f in refs):
        filters.append(RegionFilter(region))
    return Pipeline(
        name="custom" if spec.custom else preset_name,
        filters=filters,
        scorers=[
            (SCORERS[s.name](**s.params()), s.weight)
            for s in (spec.scorers if spec.scorers is not None else preset.scorers)
        ],
        picker=PICKERS[spec.picker or preset.picker](),
    )
