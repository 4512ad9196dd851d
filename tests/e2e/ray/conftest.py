"""One real Ray cluster per test module: a head and two GPU worker nodes on loopback addresses."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import RayCluster

WORKERS = {"h100": ("127.0.0.3", 2, "H100"), "a10g": ("127.0.0.4", 4, "A10G")}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    # A short temp dir: Ray's Unix sockets live under it, and socket paths are limited to 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="cn-ray-"))
    cluster = RayCluster(temp_dir)
    try:
        cluster.start(WORKERS)
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
