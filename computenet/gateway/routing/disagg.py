"""Choosing the two replicas of a disaggregated request: one to prefill the prompt, one to decode it.

The two halves want different things, so each gets its own pipeline, built from the
same filters and scorers as every other policy:

* **prefill** computes the prompt: it is fastest where the engine already holds the
  prompt's leading KV blocks (`precise-prefix`, weight 2, from the engines' KV events)
  and has the shortest queue (`queue`, weight 1) — the prefill's queue is TTFT;
* **decode** holds the prompt's KV for as long as it generates: it goes where the KV
  cache has the most room (`kv-usage`) and this gateway has the fewest requests in
  flight (`least-request`), so long decodes spread instead of preempting each other.

The deployment's own policy still contributes its `filters` (a saturation gate, a
region), applied to both halves; its scorers and picker are for whole requests and
do not apply here.
"""

from __future__ import annotations

from dataclasses import dataclass

from computenet.api import PolicySpec, ScorerRef

from .pipeline import RoutingPolicy
from .presets import build_pipeline

PREFILL_SCORERS = (ScorerRef(name="precise-prefix", weight=2), ScorerRef(name="queue", weight=1))
DECODE_SCORERS = (ScorerRef(name="kv-usage", weight=1), ScorerRef(name="least-request", weight=1))


@dataclass(frozen=True)
class PairPolicy:
    """The pipelines of a disaggregated deployment; built once per published policy."""

    prefill: RoutingPolicy
    decode: RoutingPolicy


def pair_policy(policy: PolicySpec | str | None) -> PairPolicy:
    """Prefill and decode pipelines, each with the deployment policy's filters (if it declares any)."""
    filters = policy.filters if isinstance(policy, PolicySpec) else None

    def pipeline(scorers: tuple[ScorerRef, ...]) -> RoutingPolicy:
        return build_pipeline(PolicySpec(filters=filters, scorers=list(scorers), picker="max"))

    return PairPolicy(prefill=pipeline(PREFILL_SCORERS), decode=pipeline(DECODE_SCORERS))
