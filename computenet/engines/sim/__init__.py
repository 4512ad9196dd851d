"""The built-in simulated engine: an OpenAI-compatible server that needs no GPU and no weights.

It runs vLLM's scheduling, KV cache and step timing for a model architecture on
a GPU (the engine core) in real time, and speaks vLLM's metric names and KV
events, so the gateway, router, autoscaler and demo run anywhere. Only the adapter and config are
imported here; the server (Starlette, uvicorn) loads when a sim is started.
"""

from __future__ import annotations

from .adapter import SimAdapter
from .config import SimConfig

__all__ = ["SimAdapter", "SimConfig"]
