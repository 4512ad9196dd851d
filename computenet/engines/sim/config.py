"""The sim engine's settings, read once at startup and passed to the app factory.

The knobs are vLLM's engine arguments (same names, same defaults), so a model's
tuned args describe a sim replica and a vLLM replica alike; `gpu` and `arch`
pick what the performance model simulates from the catalogue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .core import CoreConfig
from .kvcache import BLOCK_SIZE
from .transfer import DEFAULT_KV_LINK_GBPS, KVTransferConfig

KV_EVENT_HASHES = ("chain", "sha256")  # how KV events carry block hashes (kv_events.py)


@dataclass(frozen=True)
class SimConfig:
    """How the simulated replica behaves; the names follow vLLM's flags where vLLM has one."""

    model: str  # the served name; requests naming anything else get 404
    gpu: str = "H100"  # catalogue id of the simulated GPU
    arch: str = "llama-3.1-8b"  # catalogue id of the simulated model architecture
    tp: int = 1  # tensor-parallel size: GPUs the replica spans
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256  # sequences batched at once; the rest wait
    max_num_batched_tokens: int = 8192  # token budget of one engine step (chunked prefill)
    block_size: int = BLOCK_SIZE
    num_gpu_blocks_override: int | None = None  # KV blocks instead of what the memory would hold
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # None: min(architecture's context, KV-cache capacity)
    default_max_tokens: int = 16  # output length when a request sets no max_tokens (the "EOS")
    catalog: tuple[Path, ...] = ()  # extra catalogue files layered over the built-in one
    kv_events_endpoint: str | None = None  # ZMQ PUB address for vLLM-style KV events; None: off
    kv_events_replay_endpoint: str | None = None  # ZMQ ROUTER address serving missed batches (vLLM's)
    kv_events_hashes: str = "chain"  # "sha256": opaque per-process digests, as vLLM's (kv_events.py)
    time_scale: float = 1.0  # simulated step durations are divided by this (inf: no waiting at all)
    kv_transfer: KVTransferConfig | None = None  # vLLM's --kv-transfer-config: a prefill/decode side
    kv_link_gbps: float = DEFAULT_KV_LINK_GBPS  # per-GPU link a decode replica pulls KV over, 1e9 bytes/s
    # Where this replica says its KV waits (remote_host/remote_port of the params it returns); its address.
    kv_side_channel_host: str = "127.0.0.1"
    kv_side_channel_port: int = 0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("SimConfig.model must name the served model")
        for name in ("tp", "max_num_seqs", "max_num_batched_tokens", "block_size", "default_max_tokens"):
            _at_least_one(name, getattr(self, name))
        for name in ("num_gpu_blocks_override", "max_model_len"):
            if getattr(self, name) is not None:
                _at_least_one(name, getattr(self, name))
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"SimConfig.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.kv_events_replay_endpoint is not None and self.kv_events_endpoint is None:
            raise ValueError("SimConfig.kv_events_replay_endpoint needs kv_events_endpoint")
        if self.kv_events_hashes not in KV_EVENT_HASHES:
            raise ValueError(
                f"SimConfig.kv_events_hashes (--kv-events-hashes) must be one of "
                f"{', '.join(KV_EVENT_HASHES)}, got {self.kv_events_hashes!r}"
            )
        if math.isnan(self.time_scale) or self.time_scale <= 0:
            raise ValueError(f"SimConfig.time_scale must be positive, got {self.time_scale}")
        if not 0 < self.kv_link_gbps < math.inf:  # also refuses nan
            raise ValueError(
                f"SimConfig.kv_link_gbps (--kv-link-gbps) must be a positive, finite number of GB/s, "
                f"got {self.kv_link_gbps}"
            )

    def core_config(self) -> CoreConfig:
        return CoreConfig(
            tp=self.tp,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            block_size=self.block_size,
            num_gpu_blocks_override=self.num_gpu_blocks_override,
            enable_prefix_caching=self.enable_prefix_caching,
            kv_events=self.kv_events_endpoint is not None,
        )


def _at_least_one(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"SimConfig.{name} must be at least 1, got {value}")
