"""The sim engine's settings, read once at startup and passed to the app factory."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SimConfig:
    """How the simulated engine behaves; the names follow vLLM's flags where vLLM has one."""

    model: str  # the served name; requests naming anything else get 404
    max_num_seqs: int = 16  # requests decoding at once; the rest wait
    ttft_ms: float = 20.0  # delay before the first token (prefill)
    tpot_ms: float = 5.0  # delay between later tokens (decode)
    kv_cache_tokens: int = 65536  # KV-cache capacity the usage gauge is a fraction of
    max_model_len: int = 8192  # prompt + output tokens allowed per request
    default_max_tokens: int = 16  # output length when a request sets no max_tokens

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("SimConfig.model must name the served model")
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, int | float) and value < 0:
                raise ValueError(f"SimConfig.{item.name} must not be negative, got {value}")
        for name in ("max_num_seqs", "kv_cache_tokens", "max_model_len", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"SimConfig.{name} must be at least 1, got {getattr(self, name)}")

    @property
    def ttft_s(self) -> float:
        return self.ttft_ms / 1000.0

    @property
    def tpot_s(self) -> float:
        return self.tpot_ms / 1000.0
