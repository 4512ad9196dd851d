"""Continuous batching after vLLM v1's scheduler: one decision per engine step.

Every step has a token budget (`max_num_batched_tokens`) and a cap on running
sequences (`max_num_seqs`). Running sequences are served first, in order: a
decoding one needs one token, a partly prefilled one the rest of its prompt
(cut to the budget: chunked prefill). If the KV cache cannot hold a running
sequence's next token, the most recently admitted sequence is preempted — its
blocks are freed and it goes back to the front of the queue to be recomputed
from scratch — until the sequence fits. Only when nothing was preempted are
waiting requests admitted, first come first served, each starting from its
longest cached prefix.

A request whose prompt was prefilled by another engine (disaggregated prefill,
see `transfer.py`) is admitted like the others but computes nothing: it takes
KV blocks for its prompt and waits in `receiving` while the driver lets the
transfer time pass (`StepResult.receiving` says whose transfers began). Once
`finish_receiving` says the KV has landed, it goes back to the head of the queue
holding its blocks, and only its last prompt token is computed, as vLLM's decode
engine recomputes it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .kvcache import KVCache
from .perf import StepShape


class Phase(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    RECEIVING = "receiving"  # holds blocks while its prompt's KV arrives from another engine
    FINISHED = "finished"
    ABORTED = "aborted"


class SimRequest:
    """One generation as the engine tracks it; `owner` is free for the driver's own handle."""

    __slots__ = (
        "arrival_s",
        "block_hashes",
        "blocks",
        "cached_tokens",
        "final_blocks",
        "finish_s",
        "first_token_s",
        "num_cached_blocks",
        "num_computed",
        "num_output",
        "num_preemptions",
        "output_len",
        "owner",
        "phase",
        "prompt_len",
        "prompt_token_ids",
        "remote_decode",
        "remote_prefill",
        "request_id",
        "scheduled_once",
        "transfer_tokens",
    )

    def __init__(
        self,
        request_id: str,
        prompt_len: int,
        output_len: int,
        block_hashes: Sequence[int] = (),
        *,
        arrival_s: float = 0.0,
        prompt_token_ids: Sequence[int] | None = None,
        owner: Any = None,
        remote_prefill: bool = False,
        remote_decode: bool = False,
    ) -> None:
        if prompt_len < 1 or output_len < 1:
            raise ValueError(f"request {request_id}: prompt and output need at least one token")
        self.request_id = request_id
        self.prompt_len = prompt_len
        self.output_len = output_len  # tokens to generate (the plan decided it: max_tokens or a stop)
        self.block_hashes = block_hashes  # hashes of the prompt's full blocks
        self.prompt_token_ids = prompt_token_ids
        self.arrival_s = arrival_s
        self.owner = owner
        self.phase = Phase.WAITING
        self.num_computed = 0  # tokens whose K/V are in the cache
        self.num_output = 0  # tokens generated so far
        self.blocks: list[int] = []
        self.num_cached_blocks = 0
        self.num_preemptions = 0
        self.cached_tokens = 0  # prompt tokens served from the prefix cache at first admission
        self.scheduled_once = False
        self.first_token_s: float | None = None
        self.finish_s: float | None = None
        self.remote_prefill = remote_prefill  # its prompt's KV comes from another engine
        self.transfer_tokens = 0  # of those, tokens to pull (the rest hit this engine's cache)
        self.remote_decode = remote_decode  # another engine decodes: keep `final_blocks` for it
        self.final_blocks: list[int] | None = None  # the blocks it held when it finished

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + self.num_output

    @property
    def decoding(self) -> bool:
        return self.num_computed == self.num_tokens - 1 and self.num_output > 0


@dataclass
class StepPlan:
    """What one step computes: (request, new tokens) in batch order, and the shape the cost model needs."""

    scheduled: list[tuple[SimRequest, int]] = field(default_factory=list)
    preempted: list[SimRequest] = field(default_factory=list)
    receiving: list[SimRequest] = field(default_factory=list)  # admitted to wait for their KV
    tokens: int = 0
    logits: int = 0
    attention_pairs: float = 0.0
    kv_read_tokens: int = 0

    def add(self, request: SimRequest, new_tokens: int) -> None:
        self.scheduled.append((request, new_tokens))
        computed = request.num_computed
        self.tokens += new_tokens
        self.attention_pairs += new_tokens * computed + new_tokens * (new_tokens + 1) / 2
        self.kv_read_tokens += computed + new_tokens
        if computed + new_tokens >= request.num_tokens:
            self.logits += 1

    @property
    def shape(self) -> StepShape:
        return StepShape(
            self.tokens, len(self.scheduled), self.logits, self.attention_pairs, self.kv_read_tokens
        )


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be at least 1")


class Scheduler:
    """Waiting queue, running batch and the per-step decision; pure state, no clock."""

    def __init__(self, kv: KVCache, limits: SchedulerLimits) -> None:
        self.kv = kv
        self.limits = limits
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.receiving: list[SimRequest] = []
        self.preemptions = 0
        # Prompt tokens at first admission by where their KV came from (vLLM's prompt_tokens_by_source).
        self.local_compute_tokens = 0
        self.local_cache_hit_tokens = 0
        self.external_kv_tokens = 0

    def add(self, request: SimRequest) -> None:
        self.waiting.append(request)

    def abort(self, request: SimRequest) -> None:
        """Drop a request wherever it is (a client went away); its blocks are freed at once."""
        if request.phase is Phase.RUNNING:
            self.running.remove(request)
        elif request.phase is Phase.WAITING:
            self.waiting.remove(request)
        elif request.phase is Phase.RECEIVING:
            self.receiving.remove(request)
        if request.blocks:  # running, receiving, or waiting with its transferred KV
            self.kv.free(request)
        request.phase = Phase.ABORTED

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self._schedule_running(plan, self.limits.max_num_batched_tokens)
        if not plan.preempted:
            self._schedule_waiting(plan, budget)
        return plan

    def _schedule_running(self, plan: StepPlan, budget: int) -> int:
        kv, running = self.kv, self.running
        index = 0
        while index < len(running) and budget > 0:
            request = running[index]
            new_tokens = min(request.num_tokens - request.num_computed, budget)
            while not kv.allocate(request, request.num_computed + new_tokens):
                victim = running.pop()
                self._preempt(victim, plan)
                if victim is request:
                    break
            else:
                plan.add(request, new_tokens)
                budget -= new_tokens
                index += 1
                continue
            break  # the request itself was preempted: nothing after it can run either
        return budget

    def _preempt(self, request: SimRequest, plan: StepPlan) -> None:
        """Recompute preemption: forget its KV and queue it first (its prompt blocks may still hit)."""
        self.kv.free(request)
        request.num_computed = 0
        request.phase = Phase.WAITING
        request.num_preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(request)
        plan.preempted.append(request)

    def _schedule_waiting(self, plan: StepPlan, budget: int) -> None:
        kv, waiting, running = self.kv, self.waiting, self.running
        while waiting and budget > 0 and len(running) < self.limits.max_num_seqs:
            request = waiting[0]
            hits: Sequence[int] = ()
            if request.blocks:  # its KV arrived from another engine: only the last prompt token is left
                computed = request.num_computed
            else:
                hits = kv.lookup(request.block_hashes, (request.num_tokens - 1) // kv.block_size)
                computed = len(hits) * kv.block_size
                if request.remote_prefill:
                    if not self._receive(request, hits, computed):
                        break
                    plan.receiving.append(request)
                    continue
            new_tokens = min(request.num_tokens - computed, budget)
            if not kv.allocate(request, computed + new_tokens, hits):
                break
            waiting.popleft()
            if not request.scheduled_once:
                self._first_admission(request, computed)
            request.num_computed = computed
            request.phase = Phase.RUNNING
            running.append(request)
            plan.add(request, new_tokens)
            budget -= new_tokens

    def _receive(self, request: SimRequest, hits: Sequence[int], computed: int) -> bool:
        """Give a remotely prefilled request blocks for its prompt; it waits for them to fill."""
        if not self.kv.allocate(request, request.prompt_len, hits):
            return False
        self.waiting.popleft()
        request.phase = Phase.RECEIVING
        request.transfer_tokens = request.prompt_len - computed
        # All but the last prompt token arrive; that one is computed here, as vLLM does.
        self._first_admission(request, computed, external=request.prompt_len - computed - 1)
        self.receiving.append(request)
        return True

    def _first_admission(self, request: SimRequest, computed: int, external: int = 0) -> None:
        """Count, once per request, where its prompt's KV comes from: `computed` tokens from this
        cache, `external` from another engine, the rest computed here."""
        request.scheduled_once = True
        request.cached_tokens = computed
        self.kv.record_lookup(request.prompt_len, computed)
        self.local_cache_hit_tokens += computed
        self.external_kv_tokens += external
        self.local_compute_tokens += request.prompt_len - computed - external

    def prompt_tokens_by_source(self) -> dict[str, int]:
        """The counters under vLLM's `prompt_tokens_by_source` source labels."""
        return {
            "local_compute": self.local_compute_tokens,
            "local_cache_hit": self.local_cache_hit_tokens,
            "external_kv_transfer": self.external_kv_tokens,
        }

    def finish_receiving(self, request: SimRequest) -> None:
        """Its prompt's KV has landed: cache the full blocks and queue it first to compute the last token."""
        self.receiving.remove(request)
        request.remote_prefill = False  # should it be preempted later, it recomputes here, as vLLM does
        request.num_computed = request.prompt_len - 1
        self.kv.cache_full_blocks(request, request.num_computed)
        request.phase = Phase.WAITING
        self.waiting.appendleft(request)

    def complete(self, plan: StepPlan, now_s: float) -> tuple[list[SimRequest], list[SimRequest]]:
        """Apply a finished step: advance each scheduled request; return (got a token, finished)."""
        sampled: list[SimRequest] = []
        finished: list[SimRequest] = []
        kv = self.kv
        for request, new_tokens in plan.scheduled:
            request.num_computed += new_tokens
            kv.cache_full_blocks(request, request.num_computed)
            if request.num_computed < request.num_tokens:
                continue  # a prefill chunk: no token yet
            request.num_output += 1
            if request.first_token_s is None:
                request.first_token_s = now_s
            sampled.append(request)
            if request.num_output >= request.output_len:
                self.finish(request, now_s)
                finished.append(request)
        return sampled, finished

    def finish(self, request: SimRequest, now_s: float) -> None:
        self.running.remove(request)
        if request.remote_decode:
            request.final_blocks = list(request.blocks)
        self.kv.free(request)
        request.phase = Phase.FINISHED
        request.finish_s = now_s
