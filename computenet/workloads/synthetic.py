"""Synthetic workloads: seeded arrival processes and length distributions.

Recorded traces fix one rate and one mix; experiments also need "the same
thing at twice the rate", burstier arrivals (gamma with cv > 1) and controlled
prefix sharing (N system prompts). Everything is drawn from one
`random.Random(seed)`, so a seed names a workload exactly, and `write_mooncake`
makes it a file that every tool reads like a recorded trace.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from .traces import MOONCAKE_BLOCK_TOKENS, TraceRequest


@dataclass(frozen=True, slots=True)
class LengthDist:
    """Token lengths drawn from a lognormal with this mean and coefficient of variation, at least 1."""

    mean: float
    cv: float = 0.5
    max: int | None = None

    def __post_init__(self) -> None:
        if not self.mean >= 1:
            raise ValueError(f"LengthDist.mean must be at least 1, got {self.mean}")
        if not self.cv >= 0:
            raise ValueError(f"LengthDist.cv must not be negative, got {self.cv}")
        if self.max is not None and self.max < 1:
            raise ValueError(f"LengthDist.max must be at least 1, got {self.max}")

    def draw(self, rng: random.Random) -> int:
        sigma = math.sqrt(math.log1p(self.cv**2))
        value = round(rng.lognormvariate(math.log(self.mean) - sigma**2 / 2, sigma))
        return max(1, value if self.max is None else min(value, self.max))


Length = int | LengthDist


def poisson(
    rate_rps: float,
    count: int,
    *,
    input_tokens: Length,
    output_tokens: Length,
    seed: int = 0,
    prefix_groups: int = 0,
    shared_prefix_tokens: int = 0,
) -> list[TraceRequest]:
    """`count` requests with exponential inter-arrivals at `rate_rps`; the first arrives at 0 s."""
    return gamma(
        rate_rps,
        1.0,
        count,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        seed=seed,
        prefix_groups=prefix_groups,
        shared_prefix_tokens=shared_prefix_tokens,
    )


def gamma(
    rate_rps: float,
    cv: float,
    count: int,
    *,
    input_tokens: Length,
    output_tokens: Length,
    seed: int = 0,
    prefix_groups: int = 0,
    shared_prefix_tokens: int = 0,
) -> list[TraceRequest]:
    """Gamma inter-arrivals with mean 1/`rate_rps` and coefficient of variation `cv` (1 is Poisson).

    With `prefix_groups` > 0 each request starts with one of that many shared prefixes of
    `shared_prefix_tokens` tokens (a multiple of 512), then `input_tokens` tokens of its own.
    """
    _check(rate_rps, cv, count, prefix_groups, shared_prefix_tokens)
    rng = random.Random(seed)
    ids = _BlockIds(prefix_groups, shared_prefix_tokens // MOONCAKE_BLOCK_TOKENS)
    requests: list[TraceRequest] = []
    for arrival_s in _arrivals(rng, rate_rps, cv, count):
        group = rng.randrange(prefix_groups) if prefix_groups else None
        own_tokens = _draw(input_tokens, rng)
        total = own_tokens + (shared_prefix_tokens if group is not None else 0)
        requests.append(
            TraceRequest(arrival_s, total, _draw(output_tokens, rng), ids.for_request(group, total))
        )
    return requests


def _check(rate_rps: float, cv: float, count: int, prefix_groups: int, shared_prefix_tokens: int) -> None:
    if not 0 < rate_rps < math.inf:
        raise ValueError(f"rate_rps must be a positive number, got {rate_rps}")
    if not 0 < cv < math.inf:
        raise ValueError(f"cv must be a positive number, got {cv}")
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if prefix_groups < 0:
        raise ValueError(f"prefix_groups must not be negative, got {prefix_groups}")
    if shared_prefix_tokens < 0 or shared_prefix_tokens % MOONCAKE_BLOCK_TOKENS:
        raise ValueError(
            f"shared_prefix_tokens must be a multiple of {MOONCAKE_BLOCK_TOKENS} (whole hash blocks), "
            f"got {shared_prefix_tokens}"
        )
    if prefix_groups and not shared_prefix_tokens:
        raise ValueError("prefix_groups needs shared_prefix_tokens (how long each group's shared prefix is)")


def _arrivals(rng: random.Random, rate_rps: float, cv: float, count: int) -> Iterator[float]:
    shape = 1.0 / cv**2
    scale = 1.0 / (rate_rps * shape)
    arrival_s = 0.0
    for index in range(count):
        if index:
            arrival_s += rng.gammavariate(shape, scale)
        yield arrival_s


def _draw(length: Length, rng: random.Random) -> int:
    if isinstance(length, LengthDist):
        return length.draw(rng)
    if length < 1:
        raise ValueError(f"token lengths must be at least 1, got {length}")
    return length


class _BlockIds:
    """Mooncake-style prefix hash ids: a group's shared blocks, then fresh ids for every other block."""

    def __init__(self, groups: int, shared_blocks: int) -> None:
        self._shared_blocks = shared_blocks
        self._next = groups * shared_blocks  # ids below this are the groups' shared blocks

    def for_request(self, group: int | None, input_tokens: int) -> tuple[int, ...]:
        blocks = -(-input_tokens // MOONCAKE_BLOCK_TOKENS)
        shared = 0 if group is None else self._shared_blocks
        prefix = range(group * shared, group * shared + shared) if group is not None else range(0)
        fresh = range(self._next, self._next + blocks - shared)
        self._next = fresh.stop
        return (*prefix, *fresh)
