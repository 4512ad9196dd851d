"""GPU choosers: which device indices a request gets on the node the scorers picked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .filters import fitting_gpus
from .request import Request
from .state import ClusterState


def fitting_on(state: ClusterState, req: Request, node: int) -> NDArray[np.intp]:
    """Indices of the GPUs on `node` that could hold (their part of) `req`."""
    return np.flatnonzero(fitting_gpus(state, req, np.array([node]))[0])


def whole_gpus(state: ClusterState, req: Request, node: int) -> tuple[int, ...]:
    """The first `num_gpu` fully free GPUs; for a tensor-parallel request, inside one NVLink island.

    Among islands that can hold the request it takes the one with the fewest free GPUs, so that larger
    islands stay whole for larger requests.
    """
    free = fitting_on(state, req, node)
    if req.same_island and req.num_gpu > 1:
        islands = state.island[node, free]
        sizes = {int(i): int((islands == i).sum()) for i in np.unique(islands)}
        usable = [i for i, size in sizes.items() if size >= req.num_gpu]
        best = min(usable, key=lambda i: (sizes[i], i))
        free = free[islands == best]
    return tuple(int(i) for i in free[: req.num_gpu])


@dataclass(frozen=True)
class BestFitChooser:
    """A share goes to the GPU with the least free milli that holds it (lowest index on ties)."""

    def choose(
        self, state: ClusterState, req: Request, node: int, rng: np.random.Generator
    ) -> tuple[int, ...]:
        if not req.is_share:
            return whole_gpus(state, req, node)
        fits = fitting_on(state, req, node)
        return (int(fits[np.argmin(state.gpu_free[node, fits])]),)


@dataclass(frozen=True)
class RandomChooser:
    """A share goes to any GPU that holds it, uniformly at random."""

    def choose(
        self, state: ClusterState, req: Request, node: int, rng: np.random.Generator
    ) -> tuple[int, ...]:
        if not req.is_share:
            return whole_gpus(state, req, node)
        fits = fitting_on(state, req, node)
        return (int(fits[rng.integers(fits.size)]),)
