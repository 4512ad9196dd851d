"""One real Ray cluster per test module: a head and two GPU worker nodes on loopback addresses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .cluster import GPU_WORKERS, RayCluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    with RayCluster.started(GPU_WORKERS) as cluster:
        yield cluster
