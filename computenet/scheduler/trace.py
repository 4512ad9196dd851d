"""Alibaba cluster-trace-gpu-v2023 ("openb") as scheduler inputs, and the FGD paper's workload protocol.

The protocol (FGD artifact, `pkg/simulator/simulator.go`): pods sorted by name, shuffled with the seed,
then tuned to `inflate` x the cluster's GPU capacity — resampled with replacement and appended when the
trace asks for less, removed at random when it asks for more. Timestamps are not used: pods only arrive.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from .inventory import MILLI_PER_GPU, Inventory, InventoryError, trace_nodes
from .request import Request, RequestError

POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
NODE_ORDER_STREAM = 1
"""Seeds the node order apart from the pod shuffle, which uses the bare seed."""


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file, the line and the column."""


def _reader(path: Path) -> csv.DictReader[str]:
    """A CSV reader over a plain or gzipped (`.gz`) file; its `line_num` is the line last read."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    return csv.DictReader(io.StringIO(text))


def read_rows(path: Path) -> list[dict[str, str]]:
    """CSV rows of a plain or gzipped (`.gz`) file."""
    return list(_reader(path))


def load_nodes(path: Path) -> Inventory:
    try:
        return trace_nodes(read_rows(path))
    except InventoryError as exc:
        raise TraceError(f"{path}: {exc}") from None


def load_pods(path: Path) -> list[Request]:
    reader = _reader(path)
    header = reader.fieldnames or []
    if header and (missing := [c for c in POD_COLUMNS if c not in header]):
        raise TraceError(f"{path}: missing columns {missing}; a pod list has {', '.join(POD_COLUMNS)}")
    pods = []
    for row in reader:
        try:
            pods.append(pod_request(row))
        except (KeyError, TypeError, ValueError, RequestError) as exc:  # TypeError: a short row
            raise TraceError(f"{path}: line {reader.line_num}: {exc}") from None
    return pods


def pod_request(row: Mapping[str, str]) -> Request:
    """One trace pod. `gpu_milli` is clamped to [0, 1000] as the artifact's converter does."""
    num_gpu = int(row["num_gpu"])
    milli = max(0, min(MILLI_PER_GPU, int(row["gpu_milli"])))
    spec = row.get("gpu_spec") or ""
    return Request(
        name=row["name"],
        cpu_milli=int(row["cpu_milli"]),
        memory_mib=int(row["memory_mib"]),
        num_gpu=num_gpu if milli else 0,
        gpu_milli=milli if num_gpu else 0,
        gpu_types=frozenset(filter(None, spec.split("|"))),
    )


def protocol_nodes(inventory: Inventory, *, seed: int) -> Inventory:
    """The node order of one run: a permutation drawn with the seed.

    The artifact sorts the nodes by name and renames each with a `%04d-` prefix from `rand.Perm` before
    creating them, so kube-scheduler walks them in a per-seed random order; that order decides every
    score tie. Replaying in the trace's order instead leaves the CPU-only pods of the `cpu*` variants
    on the first nodes of the file, and FGD 1.8 points worse than the artifact on `cpu250`.
    """
    order = np.random.default_rng([seed, NODE_ORDER_STREAM]).permutation(len(inventory.nodes))
    return Inventory(tuple(inventory.nodes[i] for i in order))


def protocol_workload(
    pods: Sequence[Request], capacity_milli: int, *, seed: int, inflate: float = 1.3
) -> list[Request]:
    """The arrival order of one run: sorted by name, shuffled, then tuned to `inflate` x capacity.

    Tuning up draws pods uniformly with replacement and appends them under `<name>-dupN`, stopping at
    the first draw that would pass the target. Tuning down removes uniformly random pods until the demand
    is at most the target.
    """
    rng = np.random.default_rng(seed)
    base = sorted(pods, key=lambda p: p.name)
    order = [base[i] for i in rng.permutation(len(base))]
    target = inflate * capacity_milli
    demand = sum(p.gpu_demand_milli for p in order)
    if demand < target and any(p.gpu_demand_milli for p in base):  # else no draw could ever reach it
        copies: dict[str, int] = {}
        while True:
            source = base[int(rng.integers(len(base)))]
            if demand + source.gpu_demand_milli > target:
                break
            copies[source.name] = copies.get(source.name, 0) + 1
            order.append(replace(source, name=f"{source.name}-dup{copies[source.name]}"))
            demand += source.gpu_demand_milli
    while demand > target and order:
        gone = order.pop(int(rng.integers(len(order))))
        demand -= gone.gpu_demand_milli
    return order
