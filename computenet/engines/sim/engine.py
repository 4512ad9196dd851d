"""The sim's core: admission, timing and KV accounting, independent of HTTP.

The model is deliberately simple: at most `max_num_seqs` sequences run at once
(the rest wait, FIFO); a running sequence sleeps `ttft` before its first token
and `tpot` before each later one; it holds prompt + generated tokens of KV
cache until it finishes or is cancelled. A richer model can replace the
timing without touching the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .config import SimConfig
from .metrics import SimMetrics
from .tokens import generate_pieces


class ContextLengthExceeded(ValueError):
    """Prompt plus requested output does not fit the model's context."""


@dataclass(frozen=True)
class GenerationPlan:
    """What one request will produce, decided before it runs."""

    prompt_tokens: int
    output_tokens: int
    finish_reason: str  # "length" when the output limit cut it, else "stop"
    seed: int = 0  # varies the generated words; same seed, same text


def plan_generation(config: SimConfig, prompt_tokens: int, max_tokens: int | None) -> GenerationPlan:
    """Output length and finish reason for a request, or `ContextLengthExceeded` like vLLM's 400."""
    room = config.max_model_len - prompt_tokens
    if room < 1 or (max_tokens is not None and max_tokens > room):
        requested = prompt_tokens + (max_tokens or 0)
        raise ContextLengthExceeded(
            f"This model's maximum context length is {config.max_model_len} tokens. However, you "
            f"requested {requested} tokens ({prompt_tokens} in the messages, {max_tokens or 0} in "
            "the completion). Please reduce the length of the messages or completion."
        )
    if max_tokens is not None:
        return GenerationPlan(prompt_tokens, max_tokens, "length", seed=prompt_tokens)
    output = min(config.default_max_tokens, room)
    reason = "length" if output < config.default_max_tokens else "stop"
    return GenerationPlan(prompt_tokens, output, reason, seed=prompt_tokens)


@dataclass(eq=False)
class _Sequence:
    kv_tokens: int  # prompt + generated so far: what it holds in the KV cache


class SimEngine:
    """Runs generation plans under the concurrency limit and exposes the live load."""

    def __init__(self, config: SimConfig) -> None:
        self._config = config
        self._slots = asyncio.Semaphore(config.max_num_seqs)
        self._waiting = 0
        self._running: set[_Sequence] = set()
        self.metrics = SimMetrics(
            config.model,
            running=lambda: self.running,
            waiting=lambda: self.waiting,
            kv_cache_usage=lambda: self.kv_cache_usage,
        )

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def kv_cache_usage(self) -> float:
        used = sum(sequence.kv_tokens for sequence in self._running)
        return min(1.0, used / self._config.kv_cache_tokens)

    async def stream(self, plan: GenerationPlan) -> AsyncGenerator[str, None]:
        """Yield the plan's text one token at a time, paced like a real engine.

        Cancelling the consumer (or closing this generator) frees the slot at once.
        """
        started = time.monotonic()
        async with self._admit(plan.prompt_tokens) as sequence:
            await asyncio.sleep(self._config.ttft_s)
            last = time.monotonic()
            self.metrics.observe_first_token(plan.prompt_tokens, last - started)
            for index, piece in enumerate(generate_pieces(plan.output_tokens, plan.seed)):
                inter_token_s = None
                if index:
                    await asyncio.sleep(self._config.tpot_s)
                    now = time.monotonic()
                    inter_token_s, last = now - last, now
                sequence.kv_tokens += 1
                self.metrics.observe_token(inter_token_s)
                yield piece
            self.metrics.observe_finished(plan.finish_reason, time.monotonic() - started)

    @asynccontextmanager
    async def _admit(self, prompt_tokens: int) -> AsyncIterator[_Sequence]:
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        sequence = _Sequence(kv_tokens=prompt_tokens)
        self._running.add(sequence)
        try:
            yield sequence
        finally:
            self._running.discard(sequence)
            self._slots.release()
