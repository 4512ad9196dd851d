"""The real-time driver: one asyncio task steps the engine core and hands tokens out on time.

The core (`core.py`) decides each step's batch and how long it takes on the
simulated GPU; this module lets that time pass for real. One task per server
runs `core.step` while there is work and sleeps until the step's tokens are due.
Targets are absolute on the event loop's clock — each is the previous target
plus the step's duration (divided by `time_scale`) — so sleep overshoot and the
server's own CPU time never accumulate: a late step is followed by un-slept ones
until the schedule has caught up, and clients see tokens when the simulated GPU
would have produced them however busy the server's CPU is.

The task exits when the core runs dry and the next request starts a new one, so
nothing lingers between bursts (or after a test). A client that goes away aborts
its request in the core at once, which frees its KV blocks.

A decode replica of a disaggregated pair (see `transfer.py`) pulls a remotely
prefilled prompt's KV: once the core has given the request its blocks, a timer
lets the transfer time pass (divided by `time_scale`, like a step) beside the
steps, and then hands the request back to the core to decode.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .catalog import load_catalog
from .config import SimConfig
from .core import EngineCore, StepResult
from .kvcache import chain_hashes
from .metrics import SimMetrics, cache_config_info
from .scheduler import Phase, SimRequest
from .tokens import generate_pieces
from .transfer import RemoteDecode, RemotePrefill, Transfer, kv_bytes_per_token_per_gpu, kv_transfer_seconds

if TYPE_CHECKING:
    from .kv_events import KVEventPublisher

STUCK_TICK_S = 0.001  # pause when a step schedules nothing, so a stuck queue cannot spin the CPU


class ContextLengthExceeded(ValueError):
    """Prompt plus requested output does not fit the model's context."""


@dataclass(frozen=True)
class GenerationPlan:
    """What one request will produce, decided before it runs."""

    prompt_tokens: int
    output_tokens: int
    finish_reason: str  # "length" when the output limit cut it, else "stop"
    seed: int = 0  # varies the generated words; same seed, same text


def plan_generation(
    prompt_tokens: int,
    max_tokens: int | None,
    *,
    max_model_len: int,
    default_max_tokens: int,
    min_tokens: int = 0,
) -> GenerationPlan:
    """Output length and finish reason for a request, or `ContextLengthExceeded` like vLLM's 400.

    `max_tokens` is honoured exactly (the sim has no EOS to stop earlier, so
    `ignore_eos` changes nothing); without it the sim "stops" after
    `default_max_tokens`, raised to `min_tokens` and cut at the context's end.
    """
    room = max_model_len - prompt_tokens
    requested = max_tokens if max_tokens is not None else min_tokens
    if room < 1 or requested > room:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in "
            "the completion). Please reduce the length of the messages or completion."
        )
    if max_tokens is not None:
        return GenerationPlan(prompt_tokens, max_tokens, "length", seed=prompt_tokens)
    wanted = max(default_max_tokens, min_tokens)
    output = min(wanted, room)
    return GenerationPlan(prompt_tokens, output, "length" if output < wanted else "stop", seed=prompt_tokens)


def build_core(config: SimConfig) -> tuple[EngineCore, int]:
    """The engine core `config` describes and the max_model_len it allows; ValueError names the fix."""
    catalog = load_catalog(config.catalog)
    core = EngineCore(catalog.model(config.arch), catalog.gpu(config.gpu), config.core_config())
    context, capacity = core.model.max_context, core.kv_capacity_tokens
    if config.max_model_len is None:
        return core, min(context, capacity)
    if config.max_model_len > context:
        raise ValueError(
            f"--max-model-len {config.max_model_len} exceeds {config.arch}'s context of {context}"
        )
    if config.max_model_len > capacity:
        raise ValueError(
            f"--max-model-len {config.max_model_len} is more than the KV cache holds ({capacity} tokens in "
            f"{core.kv.num_blocks} blocks); lower it, or raise --gpu-memory-utilization or "
            "--num-gpu-blocks-override"
        )
    return core, config.max_model_len


@dataclass
class TransferStats:
    """The KV this replica pulled from prefill replicas, in simulated seconds."""

    transfers: int = 0
    tokens: int = 0
    bytes: float = 0.0
    seconds: float = 0.0


@dataclass
class PacingStats:
    """The driver's own timing against the model: planned step time vs wall time between deliveries."""

    steps: int = 0
    planned_s: float = 0.0
    actual_s: float = 0.0
    lag_s: float = 0.0  # how late the latest step's tokens left
    lag_sum_s: float = 0.0
    max_lag_s: float = 0.0

    def record(self, planned_s: float, actual_s: float, lag_s: float) -> None:
        self.steps += 1
        self.planned_s += planned_s
        self.actual_s += actual_s
        self.lag_s = lag_s
        self.lag_sum_s += lag_s
        self.max_lag_s = max(self.max_lag_s, lag_s)

    def as_dict(self) -> dict[str, Any]:
        drift = (self.actual_s - self.planned_s) / self.planned_s if self.planned_s else 0.0
        return {
            "steps": self.steps,
            "planned_s": self.planned_s,
            "actual_s": self.actual_s,
            "drift": drift,
            "lag_s": self.lag_s,
            "lag_sum_s": self.lag_sum_s,
            "max_lag_s": self.max_lag_s,
        }


class Generation:
    """One request as the driver and its HTTP response share it: the driver pushes, `pieces` yields."""

    def __init__(
        self,
        engine: SimEngine,
        plan: GenerationPlan,
        request_id: str,
        token_ids: list[int],
        transfer: Transfer | None = None,
    ) -> None:
        self._engine = engine
        self.plan = plan
        hashes = chain_hashes(token_ids, engine.core.kv.block_size)
        self.request = SimRequest(
            request_id,
            len(token_ids),
            plan.output_tokens,
            hashes,
            prompt_token_ids=token_ids,
            owner=self,
            remote_prefill=isinstance(transfer, RemotePrefill),
            remote_decode=isinstance(transfer, RemoteDecode),
        )
        self.delivered = 0  # tokens the driver has handed over
        self.closed = False  # the consumer is gone (done, or the client left)
        self.arrival_s = 0.0
        self.last_token_s = 0.0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens served from the prefix cache (known once the request was admitted)."""
        return self.request.cached_tokens

    async def pieces(self) -> AsyncGenerator[str, None]:
        """The generated text one token at a time, each when the driver delivers it.

        Starting the iteration submits the request; closing or cancelling it aborts
        the request in the core at once.
        """
        words = generate_pieces(self.plan.output_tokens, self.plan.seed)
        self._engine.submit(self)
        sent = 0
        try:
            while sent < len(words):
                if sent == self.delivered:
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
                ready = self.delivered
                while sent < ready:
                    yield words[sent]
                    sent += 1
        finally:
            self.closed = True
            self._engine.release(self)

    def take_token(self, now_s: float, metrics: SimMetrics) -> None:
        """The driver hands over one token at `now_s`: latencies are what the client will see."""
        if self.delivered:
            metrics.itl.observe(now_s - self.last_token_s)
        else:
            metrics.observe_first_token(self.request.prompt_len, now_s - self.arrival_s)
        metrics.generation_tokens.inc()
        self.last_token_s = now_s
        self.delivered += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class SimEngine:
    """One simulated replica: the engine core, the task that paces it, its metrics and KV events."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.core, self.max_model_len = build_core(config)
        self.metrics = SimMetrics(
            config.model, self.core, cache_config_info(self.core), kv_transfer=config.kv_transfer is not None
        )
        self.stats = PacingStats()
        self.transfer_stats = TransferStats()
        self._transfers: dict[SimRequest, asyncio.TimerHandle] = {}  # KV pulls under way
        self._publisher: KVEventPublisher | None = None
        self._driver: asyncio.Task[None] | None = None
        self._in_flight: list[SimRequest] = []  # sampled by the step being slept through
        self._sleeper: asyncio.Future[bool] | None = None
        self._model_s = 0.0  # simulated GPU-busy time, the clock the core's bookkeeping reads

    @property
    def running(self) -> int:
        return self.core.num_running

    @property
    def waiting(self) -> int:
        return self.core.num_waiting

    @property
    def kv_cache_usage(self) -> float:
        return self.core.kv.usage

    def plan(self, prompt_tokens: int, max_tokens: int | None, min_tokens: int = 0) -> GenerationPlan:
        return plan_generation(
            prompt_tokens,
            max_tokens,
            max_model_len=self.max_model_len,
            default_max_tokens=self.config.default_max_tokens,
            min_tokens=min_tokens,
        )

    def generate(
        self, plan: GenerationPlan, request_id: str, token_ids: list[int], transfer: Transfer | None = None
    ) -> Generation:
        return Generation(self, plan, request_id, token_ids, transfer)

    def transfer_params(self, generation: Generation) -> dict[str, Any]:
        """The `kv_transfer_params` a prefill answers with: where a decode replica finds the prompt's KV."""
        config = self.config
        assert config.kv_transfer is not None
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_engine_id": config.kv_transfer.engine_id,
            "remote_block_ids": generation.request.final_blocks or [],
            "remote_request_id": generation.request.request_id,
            "remote_host": config.kv_side_channel_host,
            "remote_port": config.kv_side_channel_port,
            "tp_size": config.tp,
        }

    async def start(self) -> None:
        """Server startup: bind the KV-event socket when configured."""
        self.bind_kv_events()

    def bind_kv_events(self) -> None:
        """Bind the KV-event socket once; ValueError naming the flag if the endpoint is unusable.

        The command line calls this before serving, so a bad address is a usage error, not a
        failed lifespan with a traceback.
        """
        if self.config.kv_events_endpoint is not None and self._publisher is None:
            from .kv_events import KVEventPublisher  # pyzmq and msgpack only when asked for

            self._publisher = KVEventPublisher(
                self.config.kv_events_endpoint,
                replay_endpoint=self.config.kv_events_replay_endpoint,
                hashes=self.config.kv_events_hashes,
            )

    async def close(self) -> None:
        """Server shutdown: stop the driver and close the KV-event socket."""
        for timer in self._transfers.values():
            timer.cancel()
        self._transfers.clear()
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.cancel()
            await asyncio.wait([driver])
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block (vLLM's /reset_prefix_cache); False while blocks are in use."""
        reset = self.core.kv.reset_prefix_cache()
        self._publish_events()
        return reset

    def stats_snapshot(self) -> dict[str, Any]:
        core = self.core
        busy = {
            "model_busy_s": core.busy_s,
            "core_steps": core.steps,
            "preemptions": core.scheduler.preemptions,
        }
        return {
            **self.stats.as_dict(),
            **busy,
            "time_scale": self.config.time_scale,
            "prompt_tokens_by_source": core.scheduler.prompt_tokens_by_source(),
            "kv_transfer": asdict(self.transfer_stats),
        }

    def submit(self, generation: Generation) -> None:
        loop = asyncio.get_running_loop()
        generation.arrival_s = loop.time()
        self.core.add(generation.request)
        self._wake_driver(loop)

    def _wake_driver(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive(loop), name=f"sim-driver-{self.config.model}")

    def release(self, generation: Generation) -> None:
        """The consumer is gone: abort its request if the core still holds it."""
        request = generation.request
        if request.phase not in (Phase.WAITING, Phase.RUNNING, Phase.RECEIVING):
            return
        timer = self._transfers.pop(request, None)
        if timer is not None:
            timer.cancel()
        self.core.abort(request)
        sleeper = self._sleeper
        in_flight_done = all(r.owner.closed for r in self._in_flight)
        if not self.core.has_work and in_flight_done and sleeper is not None and not sleeper.done():
            sleeper.set_result(False)  # nobody waits for this step's tokens: let the driver exit now

    async def _drive(self, loop: asyncio.AbstractEventLoop) -> None:
        core, scale = self.core, self.config.time_scale
        previous = target = loop.time()
        while core.has_work:
            result = core.step(self._model_s)
            for request in result.receiving:
                self._start_transfer(loop, request)
            self._model_s += result.duration_s
            planned = result.duration_s / scale
            target += planned
            self._in_flight = result.sampled
            on_time = await self._sleep_until(loop, target)
            self._in_flight = []
            now = loop.time()
            if on_time:
                lag = max(0.0, now - target)
                self.stats.record(planned, now - previous, lag)
                self.metrics.step_lag.observe(lag)
            previous = now
            self._deliver(result, now)
            self._publish_events()
            if not result.duration_s:
                await asyncio.sleep(STUCK_TICK_S)
                previous = target = loop.time()

    def _start_transfer(self, loop: asyncio.AbstractEventLoop, request: SimRequest) -> None:
        """The request holds its blocks: let its prompt's KV arrive over the link, beside the steps."""
        config, core = self.config, self.core
        seconds = kv_transfer_seconds(request.transfer_tokens, core.model, config.tp, config.kv_link_gbps)
        self._transfers[request] = loop.call_later(
            seconds / config.time_scale, self._transfer_done, loop, request, seconds
        )

    def _transfer_done(self, loop: asyncio.AbstractEventLoop, request: SimRequest, seconds: float) -> None:
        del self._transfers[request]
        config, core = self.config, self.core
        nbytes = request.transfer_tokens * kv_bytes_per_token_per_gpu(core.model, config.tp) * config.tp
        stats = self.transfer_stats
        stats.transfers += 1
        stats.tokens += request.transfer_tokens
        stats.bytes += nbytes
        stats.seconds += seconds
        self.metrics.observe_kv_transfer(seconds / config.time_scale, nbytes)
        core.finish_receiving(request)
        self._publish_events()  # the landed blocks are cached here now: say so before the next step
        self._wake_driver(loop)

    async def _sleep_until(self, loop: asyncio.AbstractEventLoop, target: float) -> bool:
        """Wait for the loop clock to reach `target`; False when `release` cut the wait short."""
        if target <= loop.time():
            await asyncio.sleep(0)  # behind schedule: no sleep, but let the responses run
            return True
        sleeper: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_at(target, _resolve, sleeper)
        self._sleeper = sleeper
        try:
            return await sleeper
        finally:
            timer.cancel()
            self._sleeper = None

    def _deliver(self, result: StepResult, now_s: float) -> None:
        metrics = self.metrics
        for request in result.sampled:
            generation: Generation = request.owner
            if not generation.closed:
                generation.take_token(now_s, metrics)
        for request in result.finished:
            generation = request.owner
            if not generation.closed:
                metrics.observe_finished(generation.plan.finish_reason, now_s - generation.arrival_s)

    def _publish_events(self) -> None:
        if not self.core.config.kv_events:
            return
        events = self.core.kv.drain_events()  # drained even with no socket, so they cannot pile up
        if events and self._publisher is not None:
            self._publisher.publish(events)


def _resolve(sleeper: asyncio.Future[bool]) -> None:
    if not sleeper.done():
        sleeper.set_result(True)
