"""`computenet control`: the control plane alone, the distributed mode's half that is not the gateway.

    computenet control --store postgresql+asyncpg://computenet@db:5432/computenet \
        --host 0.0.0.0 --port 8081 --leader-elect

Every replica serves the control API (resources, keys, usage, and the endpoints that
gateways started with `computenet gateway --control URL` follow). With `--leader-elect`
the replicas elect one leader through a lease in the database, and only the leader runs
the reconciler and the pool drivers; when it dies another takes over once the lease
expires (`--leader-elect-lease-duration`, 8 s by default). Without it this process
reconciles unconditionally: run one replica only. The store URL comes from `--store`,
else `$COMPUTENET_STORE_URL`, else a SQLite file in the state directory.

SIGINT or SIGTERM: stop leading (stopping the replicas this replica started), release the
lease so a follower takes over at once, then stop serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.routing import Mount

from computenet.api import AnyResource, ManifestError, load_file
from computenet.control import create_control_app
from computenet.control.distributed_api import add_distributed_routes
from computenet.control.election import LeaderElector, default_identity
from computenet.control.leader import LeaseTimings
from computenet.control.pool_set import DriverSettings
from computenet.control.term import LeaderTerm
from computenet.gateway.routing.feeds import kv_events_available
from computenet.store import ResourceStore, SchemaTooNew, sqlite_url

from .auth import ensure_admin_key
from .client import CliError
from .dburl import database_url, driver_missing
from .main import port_number, state_dir_of

log = logging.getLogger("computenet")

STORE_ENV = "COMPUTENET_STORE_URL"
IDENTITY_ENV = "COMPUTENET_IDENTITY"  # the Deployment sets it to the pod's name


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("control", help="run the control plane alone (control API and reconciler) on a shared store")
    p.add_argument(
        "--store", metavar="URL", help=f"database URL (default: ${STORE_ENV}, else SQLite in --state-dir)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address of the control API (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8081, help="port of the control API (default 8081)")
    p.add_argument("-f", "--filename", type=Path, help="resources to apply at start (e.g. the Pools)")
    p.add_argument("--auth", action="store_true", help="require an admin API key on the control API")
    p.add_argument(
        "--leader-elect", action="store_true", help="elect one leader among the replicas on this store"
    )
    p.add_argument(
        "--identity", help=f"this replica's name in the election (default ${IDENTITY_ENV}, else host-pid)"
    )
    defaults = LeaseTimings()
    p.add_argument(
        "--leader-elect-lease-duration",
        type=_seconds,
        default=defaults.lease_duration_s,
        metavar="S",
        help="how long a lease lasts unless renewed: the longest a failover waits "
        f"(default {defaults.lease_duration_s:g})",
    )
    p.add_argument(
        "--leader-elect-renew-deadline",
        type=_seconds,
        default=defaults.renew_deadline_s,
        metavar="S",
        help=f"a leader that could not renew for this long stops (default {defaults.renew_deadline_s:g})",
    )
    p.add_argument(
        "--leader-elect-retry-period",
        type=_seconds,
        default=defaults.retry_period_s,
        metavar="S",
        help=f"how often the lease is renewed or tried (default {defaults.retry_period_s:g})",
    )
    p.add_argument(
        "--poll-interval",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="how often to look for changes other replicas made (default 1)",
    )
    p.set_defaults(run=run_control)


def run_control(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state_dir = state_dir_of(args)
    try:
        timings = LeaseTimings(
            args.leader_elect_lease_duration, args.leader_elect_renew_deadline, args.leader_elect_retry_period
        )
        url = args.store or os.environ.get(STORE_ENV) or sqlite_url(state_dir)
        url = database_url("--store", url, example="computenet.db", must_exist=False)
        resources = load_file(args.filename) if args.filename else []
        state_dir.mkdir(parents=True, exist_ok=True)
    except ValueError as exc:  # ManifestError is one
        problems = exc.problems if isinstance(exc, ManifestError) else [str(exc)]
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        return 2
    except CliError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"error: cannot create the state directory {state_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    identity = args.identity or os.environ.get(IDENTITY_ENV) or default_identity()
    timed = timings if args.leader_elect else None
    settings = _Settings(url, state_dir, identity, timed, args.host, args.port, args.auth, args.poll_interval)
    try:
        asyncio.run(_serve(settings, resources))
    except ImportError as exc:
        print(driver_missing("--store", exc), file=sys.stderr)
        return 2
    except (SchemaTooNew, SQLAlchemyError, OSError) as exc:
        print(f"error: --store: cannot use {_safe(url)}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


@dataclass(frozen=True)
class _Settings:
    url: str
    state_dir: Path
    identity: str
    timings: LeaseTimings | None  # None: no leader election, this replica reconciles
    host: str
    port: int
    auth: bool
    poll_s: float


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # ours: stepping down comes before the server stops


async def _serve(settings: _Settings, resources: list[AnyResource]) -> None:
    store = await ResourceStore.open(settings.url)
    term = LeaderTerm(store, DriverSettings(settings.state_dir, kv_events=kv_events_available()))
    elector = None
    if settings.timings is not None:
        elector = LeaderElector(store.leases, identity=settings.identity, timings=settings.timings)
    control = create_control_app(store, term, auth_required=settings.auth)
    add_distributed_routes(control, store, elector, auth_required=settings.auth)
    app = Starlette(routes=[Mount("/api", app=control)])
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,  # gateways' long-polls reconnect to another replica
    )
    server = _Server(config)
    tasks: list[asyncio.Task[None]] = []
    try:
        if resources:
            await store.apply_all(resources)
        if settings.auth and (key := await ensure_admin_key(store, settings.state_dir)):
            print(f"New admin key, shown only this once (also in {settings.state_dir}):\n  {key}", flush=True)
        tasks.append(asyncio.create_task(store.poll_changes(settings.poll_s), name="store-changes"))
        leading = elector.run(term.run) if elector is not None else term.run()
        tasks.append(asyncio.create_task(leading, name="leader-election" if elector else "reconciler"))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _request_exit, server)
        role = f"leader election as {settings.identity}" if elector else "reconciling (no leader election)"
        print(f"computenet control on http://{settings.host}:{settings.port}/api/v1  {role}", flush=True)
        await server.serve()
    finally:
        for task in reversed(tasks):  # the election first: step down, release the lease
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await store.close()
        log.info("stopped")


def _request_exit(server: uvicorn.Server) -> None:
    if server.should_exit:
        server.force_exit = True
    server.should_exit = True


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)
