"""`computenet render -f FILE --pool NAME`: the Kubernetes objects a pool would run, for GitOps.

Prints, as multi-document YAML, what the `kubernetes` pool driver would apply for every Deployment in
FILE on the Pool NAME defined in the same file: the same render functions, without a cluster. Replicas
are not placed (no scheduler runs here), so the pods carry no hostname affinity; the GPU model's
affinity stays. A prefill/decode deployment renders as a RoleBasedGroup unless `--no-rbg`, which
renders plain StatefulSets without scheduling gates (nothing would lift them without the driver).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from computenet.api import Deployment, Model, Pool, load_file
from computenet.control.desired import desired_replicas
from computenet.pools import ReplicaSpec
from computenet.pools.kubernetes.render import render_manifests

from .client import CliError


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    parser = add("render", help="print the Kubernetes objects a kubernetes pool would run (GitOps)")
    parser.add_argument("-f", "--filename", required=True, type=Path, help="Models, Deployments and the Pool")
    parser.add_argument("--pool", required=True, metavar="NAME", help="a Pool of type kubernetes in FILE")
    parser.add_argument(
        "--no-rbg",
        action="store_true",
        help="prefill/decode as StatefulSets, for clusters without the RoleBasedGroup CRD",
    )
    parser.set_defaults(run=run_render)


def run_render(args: argparse.Namespace) -> int:
    resources = load_file(args.filename)
    pools = {r.name: r for r in resources if isinstance(r, Pool)}
    pool = pools.get(args.pool)
    if pool is None:
        known = ", ".join(sorted(pools)) or "none"
        raise CliError(f"error: no Pool {args.pool!r} in {args.filename} (pools there: {known})", exit_code=2)
    if pool.spec.type != "kubernetes":
        raise CliError(
            f"error: Pool {args.pool!r} is of type {pool.spec.type}; "
            "render prints the objects of kubernetes pools",
            exit_code=2,
        )
    specs = _replicas(resources, args.filename)
    try:
        objects = render_manifests(specs, pool.name, pool.spec, rbg=not args.no_rbg, gang_gates=False)
    except ValueError as exc:  # a shape the Kubernetes pool cannot run; the message names the replica
        raise CliError(f"error: {exc}", exit_code=2) from exc
    yaml.dump_all(objects, sys.stdout, Dumper=_Dumper, sort_keys=False, explicit_start=True)
    return 0


def _replicas(resources: list[Any], filename: Path) -> list[ReplicaSpec]:
    models = {r.name: r for r in resources if isinstance(r, Model)}
    specs: list[ReplicaSpec] = []
    for deployment in (r for r in resources if isinstance(r, Deployment)):
        model = models.get(deployment.spec.model)
        if model is None:
            raise CliError(
                f"error: Deployment {deployment.name!r} serves Model {deployment.spec.model!r}, "
                f"which {filename} does not define; add it to the file",
                exit_code=2,
            )
        specs += desired_replicas(deployment, model)
    return specs


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no `&id001` anchors where two objects share a value."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
