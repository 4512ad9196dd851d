"""A prompt's KV block hashes exactly as its engine computes them, so they match the engine's KV events.

Precise prefix routing compares the blocks a request will need with the blocks each
replica reported holding; that only works when both sides hash alike. The `sim`
engine's tokenizer and chat template are deterministic and importable, so its
hashes are computed here. vLLM hashes token ids with SHA-256 under a seed
(`PYTHONHASHSEED`) and a model's own tokenizer and chat template; until the gateway
loads those, vLLM replicas get no precise score and the policy's load terms decide.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from computenet.engines.sim.kvcache import BLOCK_SIZE, chain_hashes
from computenet.engines.sim.requests import RequestError, prompt_ids
from computenet.engines.sim.tokens import chat_token_ids

from .pipeline import RoutingRequest


def engine_block_hashes(request: RoutingRequest, engine: str) -> Sequence[Hashable] | None:
    if engine != "sim":
        return None
    ids = _sim_token_ids(request.content)
    return chain_hashes(ids, BLOCK_SIZE) if ids else None


def _sim_token_ids(content: Any) -> list[int] | None:
    if isinstance(content, list) and content and all(isinstance(m, dict) for m in content):
        return chat_token_ids((str(m.get("role", "")), _text(m.get("content"))) for m in content)
    if isinstance(content, str | list):
        try:
            return prompt_ids(content)
        except (RequestError, ValueError, TypeError):  # a prompt the engine would refuse: nothing to match
            return None
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
