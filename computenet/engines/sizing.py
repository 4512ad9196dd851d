"""How many requests one replica should have in flight: the rule behind `--max-in-flight auto`.

A replica serves well while the requests it holds fit in its KV cache; past that
they queue inside the engine (or are preempted and recomputed), where no
priority, no timeout and no other replica can help them. So the gateway's gate
admits, per replica, about what its KV cache holds: the engine's KV tokens over a
typical request's prompt + output tokens. Measured on a simulated 70B fleet at
4x overload, that rule (40 per replica) took p99 TTFT from 90 s (64) to 49 s at
the same throughput (docs/benchmarks.md, "SLO capacity").

The rule lives here, beside the engines that report the KV size, because both
the gateway (`computenet.gateway.sizing`) and the fleet simulator apply it and
the simulator may not import the gateway.
"""

from __future__ import annotations

import math
from typing import Final, Literal

AUTO: Final = "auto"
MaxInFlight = int | Literal["auto"]  # requests per replica, or sized from its KV cache

# Per replica while there is nothing to size from (no request finished yet, or the engine does not
# report its KV size: a provider, a server that is not vLLM, SGLang or the sim). The benchmarks'
# hand-set value: generous rather than starving a fleet whose size is not known yet.
DEFAULT_PER_REPLICA: Final = 64
# Requests the typical size averages over: the mean of the first ones, then an exponential average
# with this weight, so a few very long requests move it but do not make it.
TYPICAL_WINDOW: Final = 100


class TypicalRequest:
    """A moving average of finished requests' prompt + output tokens (one per model).

    Plain mean until `window` requests have finished (a first request alone does
    not get weight 1/window against a made-up start), then an EWMA of weight
    1/window. One `observe` is a few float operations: it runs on every request.
    """

    __slots__ = ("_seen", "_tokens", "_window")

    def __init__(self, window: int = TYPICAL_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"TypicalRequest needs window >= 1, got {window}")
        self._window = window
        self._seen = 0
        self._tokens = 0.0

    def observe(self, tokens: float) -> None:
        """A request finished having held `tokens` (prompt + output) in the KV cache."""
        if not tokens > 0:  # no usage reported (or NaN): it says nothing about request size
            return
        self._seen += 1
        self._tokens += (tokens - self._tokens) / min(self._seen, self._window)

    @property
    def seen(self) -> int:
        """Requests observed so far; callers refresh what they derived every so many of them."""
        return self._seen

    @property
    def tokens(self) -> float | None:
        """The typical request's tokens; None before any request finished."""
        return self._tokens if self._seen else None


def kv_slots(kv_capacity_tokens: float, typical_tokens: float | None) -> int:
    """Requests one replica should hold: floor(KV tokens / typical tokens), at least 1.

    Unknown KV size (0) or no typical size yet gives `DEFAULT_PER_REPLICA`: never 0,
    which would block a model whose replicas cannot say how big they are.
    """
    if not (kv_capacity_tokens > 0 and typical_tokens and typical_tokens > 0):
        return DEFAULT_PER_REPLICA
    if math.isinf(kv_capacity_tokens):
        return DEFAULT_PER_REPLICA
    return max(1, int(kv_capacity_tokens // typical_tokens))


def parse_max_in_flight(flag: str, text: str | int) -> MaxInFlight:
    """`auto` or a positive integer; ValueError naming `flag` otherwise (the CLIs turn it into exit 2)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        word = str(text).strip().lower()
        if word == AUTO:
            return AUTO
        value = int(word) if word.isascii() and word.isdigit() else 0
    if value < 1:
        raise ValueError(f"{flag} must be a positive integer or auto, got {text!r}")
    return value
