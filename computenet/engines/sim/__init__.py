"""The built-in simulated engine: an OpenAI-compatible server that needs no GPU and no weights.

It paces tokens like a real engine and exposes vLLM's metric names, so the
gateway, autoscaler and demo run anywhere. Only the adapter and config are
imported here; the server (Starlette, uvicorn) loads when a sim is started.
"""

from __future__ import annotations

from .adapter import SimAdapter
from .config import SimConfig

__all__ = ["SimAdapter", "SimConfig"]
