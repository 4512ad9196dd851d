"""`computenet up`: the embedded mode. Store, reconciler, local pool and gateway in one process.

One port serves both the OpenAI-compatible gateway (``/v1``) and the control API
(``/api/v1``). Replicas publish their KV-cache events on local ports (when pyzmq and
msgpack are installed: the `kv-events` extra), so the gateway's precise prefix routing
hears them; a deployment of prefill and decode replicas is served disaggregated.
Signals are ours, not uvicorn's: SIGINT or SIGTERM stops accepting requests, then
stops every replica, then exits. If this process dies without that
chance, the kernel kills the replicas (see `computenet.pools.launcher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from computenet.api import AnyResource, Deployment, ManifestError, ObjectMeta, Pool, PoolSpec, load_file
from computenet.control import Reconciler, create_control_app
from computenet.control.pool_set import DriverSettings, PoolSet
from computenet.gateway import Gateway, GatewayApp
from computenet.gateway.routing.feeds import kv_events_available
from computenet.store import NotFound, ResourceStore, SchemaTooNew, sqlite_url

from .auth import auth_banner, ensure_admin_key, follow_keys
from .client import SERVER_FILE
from .embedded_gateway import embedded_gateway, follow_gateway_config

log = logging.getLogger("computenet")

# Held while `up` runs: two of them on one state directory would both start every replica.
LOCK_FILE = "up.lock"
READY_WAIT_S = 120.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # `up` installs its own handlers so that shutdown runs our cleanup first


def run_up(
    manifest: Path, *, state_dir: Path, host: str, port: int, auth: bool = False, region: str | None = None
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        resources = load_file(manifest)
    except ManifestError as exc:
        print("\n".join(f"error: {p}" for p in exc.problems), file=sys.stderr)
        return 2
    if not _port_free(host, port):
        print(f"error: port {port} on {host} is in use; pass --port N to use another", file=sys.stderr)
        return 1
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"error: cannot create the state directory {state_dir}: {exc.strerror}; pass --state-dir DIR",
            file=sys.stderr,
        )
        return 1
    with (state_dir / LOCK_FILE).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"error: another `computenet up` already uses {state_dir}; stop it or pass --state-dir DIR",
                file=sys.stderr,
            )
            return 1
        try:
            asyncio.run(
                _serve(resources, state_dir=state_dir, host=host, port=port, auth=auth, region=region)
            )
        except SchemaTooNew as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


async def _serve(
    resources: list[AnyResource], *, state_dir: Path, host: str, port: int, auth: bool, region: str | None
) -> None:
    store = await ResourceStore.open(sqlite_url(state_dir))
    # Pools come from Pool resources: the `local` one is made below if the file declares none.
    pools = PoolSet(DriverSettings(state_dir, kv_events=_kv_events_installed()))
    gateway = embedded_gateway(store, state_dir, auth=auth, region=region)
    reconciler = Reconciler(store, pools, gateway.registry)
    admin_key = await ensure_admin_key(store, state_dir) if auth else None
    server = _Server(
        uvicorn.Config(
            _app(gateway, create_control_app(store, reconciler, auth_required=auth)),
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _request_exit, server)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    tasks: list[asyncio.Task[None]] = []
    try:
        await _ensure_local_pool(store, resources, region)
        await store.apply_all(resources)
        await gateway.start()
        tasks.append(asyncio.create_task(follow_keys(store, gateway.keys.replace), name="keys"))
        tasks.append(asyncio.create_task(follow_gateway_config(store, gateway), name="gateway-config"))
        tasks.append(asyncio.create_task(reconciler.run(), name="reconciler"))
        banner = auth_banner(auth, admin_key, state_dir)
        tasks.append(asyncio.create_task(_announce(server, url, state_dir, resources, banner), name="banner"))
        tasks.append(asyncio.create_task(_report_ready(store, resources), name="ready"))
        await server.serve()
    finally:
        log.info("shutting down: stopping replicas")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pools.close()
        await gateway.close()
        await store.close()
        (state_dir / SERVER_FILE).unlink(missing_ok=True)
        log.info("stopped")


def _kv_events_installed() -> bool:
    """Whether replicas can publish KV events here (and the gateway subscribe): the `kv-events` extra."""
    found = kv_events_available()
    if not found:
        log.info(
            "pyzmq or msgpack is not installed: replicas start without KV events, and precise prefix "
            "routing falls back on load; pip install 'computenet[kv-events]' to turn it on"
        )
    return found


def _app(gateway: Gateway, control: Starlette) -> GatewayApp:
    """The gateway answers its own paths; everything else (the control API under /api) falls through."""
    return GatewayApp(gateway, fallback=Starlette(routes=[Mount("/api", app=control)]))


def _request_exit(server: uvicorn.Server) -> None:
    if server.should_exit:
        server.force_exit = True  # second Ctrl-C: stop waiting for open connections
    server.should_exit = True


async def _ensure_local_pool(store: ResourceStore, resources: list[AnyResource], region: str | None) -> None:
    """This machine as pool `local` (in the gateway's region), unless the file or the store declares pools."""
    if not any(isinstance(r, Pool) for r in resources) and not await store.list("Pool"):
        spec = PoolSpec(region=region) if region else PoolSpec()
        await store.apply(Pool(metadata=ObjectMeta(name="local"), spec=spec))


async def _announce(
    server: uvicorn.Server, url: str, state_dir: Path, resources: list[AnyResource], auth: str
) -> None:
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    (state_dir / SERVER_FILE).write_text(json.dumps({"url": url, "pid": os.getpid()}))
    models = [r.spec.model for r in resources if isinstance(r, Deployment)]
    example = models[0] if models else "MODEL"
    print(
        f"\nComputeNet is up.\n"
        f"  gateway (OpenAI API):  {url}/v1\n"
        f"  control API:           {url}/api/v1   (docs: {url}/api/docs)\n"
        f"  metrics:               {url}/metrics\n"
        f"  state:                 {state_dir}\n"
        f"  {auth}\n\n"
        f"Try:\n"
        f"  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{example}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\'\n'
        f"  computenet get deployments\n",
        flush=True,
    )


async def _report_ready(store: ResourceStore, resources: list[AnyResource]) -> None:
    """Say when each deployment from the file is fully ready, so the user knows to go ahead."""
    waiting = {r.name for r in resources if isinstance(r, Deployment)}
    deadline = asyncio.get_running_loop().time() + READY_WAIT_S
    while waiting and asyncio.get_running_loop().time() < deadline:
        for name in sorted(waiting):
            try:
                dep = await store.get("Deployment", name)
            except NotFound:
                waiting.discard(name)
                continue
            if (
                isinstance(dep, Deployment)
                and dep.status
                and dep.status.ready_replicas >= dep.desired_replicas
            ):
                print(
                    f"deployment {name}: {dep.status.ready_replicas}/{dep.desired_replicas} replicas ready",
                    flush=True,
                )
                waiting.discard(name)
        await asyncio.sleep(0.1)
    for name in sorted(waiting):
        print(
            f"deployment {name} is not ready yet; see `computenet get deployment {name} -o yaml`", flush=True
        )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
