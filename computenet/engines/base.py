"""The `EngineAdapter` seam: how to start an inference server and read its state.

An adapter is pure: it builds a command line and parses metrics text. Starting
processes, probing health and scraping are the pool drivers' and gateway's job,
so the same adapter serves a local process, a Ray actor or a Kubernetes pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

ArgValue = str | int | float | bool | list[str]


@dataclass(frozen=True)
class LaunchSpec:
    """Everything an adapter needs to build a command for one replica."""

    served_name: str  # the public model name the server must answer to
    source: str  # weights: a path or a hub id (ignored by `sim`)
    host: str
    port: int
    args: Mapping[str, ArgValue] = field(default_factory=dict)
    gpus: int = 0


HUB_SCHEMES = ("hf://", "modelscope://")


def weights_ref(source: str) -> str:
    """What an engine's model argument takes: a path as is, a hub id without its `hf://` scheme.

    vLLM and SGLang read a bare `org/name` as a Hugging Face id (or a ModelScope one with
    `VLLM_USE_MODELSCOPE` / `SGLANG_USE_MODELSCOPE` set); they do not know our scheme prefixes.
    """
    for scheme in HUB_SCHEMES:
        if source.startswith(scheme):
            return source.removeprefix(scheme)
    return source


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """A replica's live load, read from its /metrics; the routing and autoscaling signals.

    Counters are the engine's lifetime totals: a reader that wants a rate over its
    own window keeps the previous scrape and takes the difference.
    """

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0  # fraction 0..1
    prompt_tokens_total: float = 0.0
    generation_tokens_total: float = 0.0
    # LoRA adapters with requests running or waiting: routing a request for one of them
    # there avoids loading it on another replica. Empty where the engine does not say.
    lora_adapters: frozenset[str] = frozenset()
    max_lora: int = 0  # adapters the engine can hold at once; 0 unknown (or LoRA off)
    prefix_cache_queries_total: float = 0.0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits_total: float = 0.0  # of those, tokens found cached
    prefix_cache_hit_rate: float | None = None  # fraction 0..1; None where it cannot be told
    # Tokens the engine's KV cache holds (over its data-parallel cores): what `--max-in-flight auto`
    # divides by a typical request's tokens. 0 unknown (not reported, or not allocated yet).
    kv_capacity_tokens: float = 0.0


class EngineAdapter(Protocol):
    name: str
    health_path: str
    metrics_path: str

    def command(self, spec: LaunchSpec) -> list[str]:
        """argv that starts a server answering the OpenAI API on spec.host:spec.port."""
        ...

    def parse_metrics(self, text: str) -> EngineLoad:
        """Read the engine's Prometheus text exposition under the engine's own metric names."""
        ...


def args_to_flags(args: Mapping[str, ArgValue]) -> list[str]:
    """`{"max_num_seqs": 8, "enforce_eager": True}` -> `--max-num-seqs 8 --enforce-eager`.

    Keys may be written snake_case or kebab-case; `False` drops the flag, lists repeat values.
    """
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            continue
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def has_arg(args: Mapping[str, ArgValue], *names: str) -> bool:
    """Whether `args` sets any of `names` (snake_case), however the key is spelled."""
    wanted = {name.replace("-", "_") for name in names}
    return any(key.replace("-", "_") in wanted for key in args)


def arg_value(args: Mapping[str, ArgValue], name: str) -> ArgValue | None:
    """The value `args` set for `name` (snake_case), however the key is spelled; None if unset."""
    return next((value for key, value in args.items() if key.replace("-", "_") == name), None)
