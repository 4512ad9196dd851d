"""The sim's engine core: scheduler + KV cache + performance model, stepped by a driver.

`EngineCore` has no clock and does no I/O. A driver asks it for the next step
(`step(now_s)` returns how long the step takes and which requests got a token),
then lets that much time pass — by sleeping (the real-time server) or by
jumping a virtual clock (the fleet simulator). Both drivers therefore see the
same batching, preemption and prefix-cache behaviour.

For the fleet, `decode_run` advances a steady decode batch many steps at once:
while no request arrives, finishes or runs out of KV blocks, every step adds one
token to each running sequence and costs an affine function of the total
context, so the steps are summed without touching each request per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .catalog import GpuSpec, ModelArch
from .kvcache import BLOCK_SIZE, KVCache
from .perf import PerfConstants, PerfModel
from .scheduler import Scheduler, SchedulerLimits, SimRequest


@dataclass(frozen=True)
class CoreConfig:
    """The vLLM engine arguments that shape timing and capacity."""

    tp: int = 1
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = BLOCK_SIZE
    num_gpu_blocks_override: int | None = None
    enable_prefix_caching: bool = True
    kv_events: bool = False
    perf: PerfConstants = field(default_factory=PerfConstants)

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {self.block_size}")


@dataclass
class StepResult:
    duration_s: float
    sampled: list[SimRequest]  # requests that produced one token at the end of the step
    finished: list[SimRequest]
    preempted: int = 0
    steps: int = 1
    receiving: list[SimRequest] = field(default_factory=list)  # began waiting for their KV (a transfer)


class NotEnoughMemory(ValueError):
    """The model's weights leave no room for a KV cache on this GPU."""


class EngineCore:
    """One replica's engine: admit requests, step, report load."""

    def __init__(self, model: ModelArch, gpu: GpuSpec, config: CoreConfig | None = None) -> None:
        self.config = config = config or CoreConfig()
        self.model, self.gpu = model, gpu
        self.perf = PerfModel(model, gpu, config.tp, config.perf)
        blocks = config.num_gpu_blocks_override or self.perf.kv_cache_blocks(
            config.gpu_memory_utilization, config.block_size
        )
        if blocks < 1:
            weights_gib = model.weight_bytes / config.tp / 2**30
            raise NotEnoughMemory(
                f"{model.id} needs {weights_gib:.1f} GiB of weights per GPU; {gpu.id} with "
                f"gpu_memory_utilization {config.gpu_memory_utilization} has no room left for a KV cache "
                "(raise --tp or use a larger GPU)"
            )
        self.kv = KVCache(
            blocks, config.block_size, prefix_caching=config.enable_prefix_caching, events=config.kv_events
        )
        limits = SchedulerLimits(config.max_num_seqs, config.max_num_batched_tokens)
        self.scheduler = Scheduler(self.kv, limits)
        self.busy_s = 0.0  # summed step time: the GPU-busy numerator
        self.steps = 0

    @property
    def kv_capacity_tokens(self) -> int:
        return self.kv.num_blocks * self.kv.block_size

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        """Queued requests, those waiting for their KV to arrive included (as vLLM counts them)."""
        return len(self.scheduler.waiting) + len(self.scheduler.receiving)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def add(self, request: SimRequest) -> None:
        self.scheduler.add(request)

    def abort(self, request: SimRequest) -> None:
        self.scheduler.abort(request)

    def finish_receiving(self, request: SimRequest) -> None:
        """A remotely prefilled request's KV has landed; the next step computes its last prompt token."""
        self.scheduler.finish_receiving(request)

    def step(self, now_s: float) -> StepResult:
        """Schedule and cost one step that starts at `now_s`; tokens land at `now_s + duration_s`."""
        plan = self.scheduler.schedule()
        duration = self.perf.step_time(plan.shape) if plan.scheduled else 0.0
        sampled, finished = self.scheduler.complete(plan, now_s + duration)
        self.busy_s += duration
        self.steps += 1
        return StepResult(duration, sampled, finished, len(plan.preempted), receiving=plan.receiving)

    def run_until_idle(self, now_s: float = 0.0, *, coalesce: bool = True) -> float:
        """Step on a virtual clock until every request has finished; returns the clock then.

        With `coalesce`, steady decode stretches go through `decode_run` (same result, fewer
        calls). For benchmarks and tests that need no arrivals after the start.
        """
        while self.has_work:
            result = self.decode_run(now_s, math.inf) if coalesce else None
            now_s += (result or self.step(now_s)).duration_s
        return now_s

    def decode_run(self, now_s: float, until_s: float) -> StepResult | None:
        """Several pure-decode steps at once, stopping at a finish, block shortage or `until_s`.

        Returns None when the batch is not in steady decode (someone is prefilling,
        or a waiting request could be admitted); the caller then takes a `step`.
        """
        scheduler = self.scheduler
        running = scheduler.running
        if not running or (scheduler.waiting and len(running) < scheduler.limits.max_num_seqs):
            return None
        if len(running) > scheduler.limits.max_num_batched_tokens:
            return None
        if not all(request.decoding for request in running):
            return None
        steps = min(request.output_len - request.num_output for request in running)
        steps = self._steps_that_fit(running, steps)
        if steps < 2:
            return None
        context = sum(request.num_computed for request in running)
        taken, elapsed = _decode_span(self.perf, len(running), context, steps, now_s, until_s)
        if not taken:
            return None
        return self._apply_decode_run(now_s + elapsed, elapsed, taken)

    def _steps_that_fit(self, running: list[SimRequest], steps: int) -> int:
        """The most steps (up to `steps`) for which every sequence's new blocks can be allocated."""
        block_size, free = self.kv.block_size, self.kv.free_blocks

        def blocks_needed(count: int) -> int:
            return sum(max(0, -(-(r.num_computed + count) // block_size) - len(r.blocks)) for r in running)

        if blocks_needed(steps) <= free:
            return steps
        low, high = 0, steps  # blocks_needed(low) fits, blocks_needed(high) does not
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if blocks_needed(middle) <= free else (low, middle)
        return low

    def _apply_decode_run(self, end_s: float, elapsed: float, taken: int) -> StepResult:
        kv = self.kv
        sampled = list(self.scheduler.running)
        finished = []
        for request in sampled:
            request.num_computed += taken
            request.num_output += taken
            kv.allocate(request, request.num_computed)
            if request.num_output >= request.output_len:
                finished.append(request)
        for request in finished:
            self.scheduler.finish(request, end_s)
        self.busy_s += elapsed
        self.steps += taken
        return StepResult(elapsed, sampled, finished, 0, taken)


def _decode_span(
    perf: PerfModel, batch: int, context: int, steps: int, now_s: float, until_s: float
) -> tuple[int, float]:
    """How many of `steps` decode steps start before `until_s`, and their summed time.

    Step k reads `context + k * batch` cached tokens and a decode step's cost is affine
    in that (the linear layers are fixed by the batch, attention grows with the
    context), so t_k = t0 + k * slope and the first n steps take n * t0 + slope * n(n-1)/2.
    Solving for n instead of summing step by step halves a fleet replay. Should the
    cost model stop being affine over the run, the exact per-step sum is used.
    """
    t0 = perf.decode_step_time(batch, context)
    slope = perf.decode_step_time(batch, context + batch) - t0

    def start(k: int) -> float:  # offset of step k from now_s
        return k * t0 + slope * (k * (k - 1) / 2)

    last = steps - 1
    if now_s + start(last) < until_s:
        taken = steps
    else:
        k = max(0, min(last, math.ceil(_solve_start(t0, slope, until_s - now_s))))
        while k > 0 and now_s + start(k) >= until_s:
            k -= 1
        taken = k + 1 if now_s + start(k) < until_s else 0
    if taken > 2 and not _affine(perf, batch, context, taken - 1, t0, slope):
        return _decode_span_stepwise(perf, batch, context, steps, now_s, until_s)
    return taken, start(taken)


def _solve_start(t0: float, slope: float, window_s: float) -> float:
    """The real k with k * t0 + slope * k(k-1)/2 = window_s: a first guess the caller corrects."""
    if slope <= 0:
        return window_s / t0
    linear = t0 - slope / 2
    return (math.sqrt(linear * linear + 2 * slope * window_s) - linear) / slope


def _affine(perf: PerfModel, batch: int, context: int, last: int, t0: float, slope: float) -> bool:
    """Whether the step costs at k = 2 and k = `last` lie on the line through k = 0 and k = 1."""
    for k in (2, last):
        expected = t0 + k * slope
        if not math.isclose(perf.decode_step_time(batch, context + k * batch), expected, rel_tol=1e-9):
            return False
    return True


def _decode_span_stepwise(
    perf: PerfModel, batch: int, context: int, steps: int, now_s: float, until_s: float
) -> tuple[int, float]:
    elapsed, taken = 0.0, 0
    while taken < steps and now_s + elapsed < until_s:
        elapsed += perf.decode_step_time(batch, context + taken * batch)
        taken += 1
    return taken, elapsed
