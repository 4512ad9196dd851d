"""Drive an `EngineCore` on a virtual clock, for tests that look at timing without sockets."""

from __future__ import annotations

from collections.abc import Sequence

from computenet.engines.sim.catalog import GpuSpec, load_catalog
from computenet.engines.sim.core import CoreConfig, EngineCore
from computenet.engines.sim.scheduler import SimRequest

CATALOG = load_catalog()


def core(
    config: CoreConfig | None = None, *, gpu: str | GpuSpec = "H100", model: str = "llama-3.1-8b"
) -> EngineCore:
    spec = gpu if isinstance(gpu, GpuSpec) else CATALOG.gpu(gpu)
    return EngineCore(CATALOG.model(model), spec, config or CoreConfig())


def run(engine: EngineCore, requests: Sequence[SimRequest], *, fast: bool = False) -> float:
    """Submit every request at t=0 and step until all finish; returns the makespan."""
    for request in requests:
        engine.add(request)
    return engine.run_until_idle(coalesce=fast)


def ttft(request: SimRequest) -> float:
    assert request.first_token_s is not None
    return request.first_token_s - request.arrival_s


def tokens(count: int, start: int = 0) -> list[int]:
    return list(range(start, start + count))
