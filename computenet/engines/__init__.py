"""Engine adapters by name: how to start vLLM, SGLang or the sim, and read their load.

Pool drivers look an engine up here by the runtime name a model declares;
the gateway uses the same adapters to parse replica metrics. The registry is
read-only: adding an engine means adding an adapter to `_ADAPTERS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .base import EngineAdapter, EngineLoad, LaunchSpec, args_to_flags
from .sglang import SglangAdapter
from .sim import SimAdapter
from .vllm import VllmAdapter

_ADAPTERS: tuple[EngineAdapter, ...] = (VllmAdapter(), SglangAdapter(), SimAdapter())

ENGINES: Mapping[str, EngineAdapter] = MappingProxyType({adapter.name: adapter for adapter in _ADAPTERS})


def get_engine(name: str) -> EngineAdapter:
    """The adapter for runtime `name`, or `KeyError` naming the engines there are."""
    try:
        return ENGINES[name]
    except KeyError:
        known = ", ".join(sorted(ENGINES))
        raise KeyError(f"unknown engine {name!r}; known engines: {known}") from None


__all__ = ["ENGINES", "EngineAdapter", "EngineLoad", "LaunchSpec", "args_to_flags", "get_engine"]
