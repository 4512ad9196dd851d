"""`computenet gateway`: the gateway alone, without a control plane or state directory.

    computenet gateway --port 4000 --model llama --upstream http://10.0.0.5:8000,http://10.0.0.6:8000
    computenet gateway -f gateway.yaml        # Providers, Routes, Tenants and APIKeys
    computenet gateway --control http://computenet-control:8081 --redis redis://redis:6379/0
    computenet gateway --model llama --upstream http://a:8000,http://b:8000 --engine vllm \
        --kv-events tcp://a:5557,tcp://b:5557 --policy precise-prefix --max-in-flight auto

This is how people run a LiteLLM proxy today. Upstreams are any OpenAI-compatible
servers unless `--engine` says what they run: then the gateway reads their load from
/metrics, and with `--kv-events` (one publisher per upstream, in the same order) follows
their KV caches for precise prefix routing; `--max-in-flight auto` sizes each model's
admission gate from the KV-cache size those metrics report. With `--control URL` the gateway
follows the endpoints a distributed control plane publishes (`computenet control`; any number
of gateways may follow one; `$COMPUTENET_API_KEY` is sent when its API needs a key), and
`--redis` shares rate limits and budgets among them. With `--workers N` uvicorn starts N
processes on one socket; each builds its own gateway from the same arguments, which
travel to them in an environment variable (uvicorn re-imports the app per worker).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import uvicorn

from computenet.api import (
    DEFAULT_PRESET,
    AnyResource,
    ApiKey,
    DeclaredKey,
    Endpoint,
    KeyLimits,
    ManifestError,
    PolicySpec,
    Provider,
    Route,
    Tenant,
    UsageRecord,
    hash_key,
    load_file,
)
from computenet.engines import ENGINES
from computenet.engines.sizing import AUTO, DEFAULT_PER_REPLICA, MaxInFlight, parse_max_in_flight
from computenet.gateway import ConfigError, Gateway, GatewayApp
from computenet.gateway.admission import Gates
from computenet.gateway.auth import KeyBook
from computenet.gateway.control_feed import ControlFeed
from computenet.gateway.guards import Guards
from computenet.gateway.limits import (
    BudgetLedger,
    MemoryBudgetLedger,
    MemoryRateLimiter,
    RateLimiter,
    RedisBudgetLedger,
    RedisRateLimiter,
)
from computenet.gateway.metering import UsageMeter
from computenet.gateway.routing.feeds import kv_events_available
from computenet.gateway.routing.presets import PRESETS
from computenet.gateway.tracing import Tracer
from computenet.store import ResourceStore

from .client import API_KEY_ENV
from .main import port_number

ARGS_ENV = "COMPUTENET_GATEWAY_ARGS"
STATIC_DEPLOYMENT = "upstream"


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("gateway", help="run the gateway alone in front of static upstreams or a file of routes")
    p.add_argument("-f", "--filename", type=Path, help="Providers, Routes, Tenants and APIKeys (YAML)")
    p.add_argument(
        "--control",
        metavar="URL",
        help="follow the endpoints published by this control API (`computenet control`), e.g. "
        "http://computenet-control:8081",
    )
    p.add_argument("--model", help="public model name served by --upstream")
    p.add_argument("--upstream", help="comma-separated base URLs of OpenAI-compatible servers")
    p.add_argument(
        "--engine",
        choices=sorted(ENGINES),
        help="what the upstreams run, so their /metrics feed routing (default: any server; none read)",
    )
    p.add_argument(
        "--kv-events",
        metavar="URL[,URL...]",
        help="each upstream's KV-event publisher (tcp://HOST:PORT), in --upstream's order; needs --engine",
    )
    p.add_argument(
        "--kv-events-replay", metavar="URL[,URL...]", help="each upstream's KV-event replay socket, likewise"
    )
    p.add_argument(
        "--policy",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET,
        help=f"routing preset for the upstreams (default {DEFAULT_PRESET}; docs/routing.md)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=4000, help="port (default 4000)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port (default 1)")
    p.add_argument(
        "--require-key", action="store_true", help="refuse requests without a key even if none is declared"
    )
    p.add_argument(
        "--redis", metavar="URL", help="share rate limits and budgets with other gateways through Redis"
    )
    p.add_argument(
        "--limits-failure-mode",
        choices=["open", "closed"],
        default="open",
        help="while Redis is unreachable: admit requests (open, default) or refuse them with 503 (closed)",
    )
    p.add_argument(
        "--max-in-flight",
        type=max_in_flight,
        metavar="N|auto",
        help="requests per endpoint at once; beyond, requests queue by priority (x-computenet-priority). "
        "auto: what each upstream's KV cache holds of the model's typical request, read from its "
        f"/metrics (needs --engine; {DEFAULT_PER_REPLICA} per endpoint until known; docs/gateway.md)",
    )
    p.add_argument(
        "--queue-size", type=int, default=1024, help="requests that may wait per model (default 1024)"
    )
    p.add_argument(
        "--queue-timeout", type=float, default=30.0, help="seconds a request may wait (default 30)"
    )
    p.add_argument(
        "--usage-db",
        metavar="URL",
        help="write usage records to this database (sqlite+aiosqlite:///usage.db or postgresql+asyncpg://...)",
    )
    p.add_argument(
        "--region",
        help="where this gateway runs: it prefers replicas in this region and spills to others when full",
    )
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one JSON line per request on stderr, without prompts or keys (default: on)",
    )
    p.set_defaults(run=run_gateway)


def run_gateway(args: argparse.Namespace) -> int:
    settings = {
        "filename": str(args.filename) if args.filename else None,
        "model": args.model,
        "upstream": args.upstream,
        "engine": args.engine,
        "kv_events": args.kv_events,
        "kv_events_replay": args.kv_events_replay,
        "policy": args.policy,
        "require_key": args.require_key,
        "redis": args.redis,
        "failure_mode": args.limits_failure_mode,
        "max_in_flight": args.max_in_flight,
        "queue_size": args.queue_size,
        "queue_timeout": args.queue_timeout,
        "access_log": args.access_log,
        "usage_db": args.usage_db,
        "control": args.control,
        "region": args.region,
    }
    try:
        _check(args)
        app = build_app(settings)  # fail here, with a clear message, rather than in every worker
    except (ManifestError, ConfigError, ValueError) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    auth = "on" if app.gw.keys.enabled else "off (no APIKey declared)"
    print(
        f"computenet gateway on http://{args.host}:{args.port}/v1  workers={args.workers}  auth={auth}",
        flush=True,
    )
    if args.workers == 1:
        if args.access_log:
            _log_access_to_stderr()
        target: GatewayApp | str = app
    else:
        # Each worker process imports the app anew: the settings travel in the environment.
        os.environ[ARGS_ENV] = json.dumps(settings)
        target = "computenet.cli.gateway:app_from_env"
    uvicorn.run(
        target,
        factory=args.workers > 1,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=args.log_level,
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    return 0


def _check(args: argparse.Namespace) -> None:
    if args.filename is None and args.control is None and (args.model is None or args.upstream is None):
        raise ValueError("give --model NAME --upstream URL[,URL...], --control URL or -f FILE (or several)")
    if args.control is not None and not args.control.startswith(("http://", "https://")):
        raise ValueError(f"--control must be the control API's http:// or https:// URL, got {args.control!r}")
    if (args.model is None) != (args.upstream is None):
        raise ValueError("--model and --upstream go together: the name clients use, and where it is served")
    if (args.kv_events or args.kv_events_replay) and not args.engine:
        raise ValueError("--kv-events needs --engine: the gateway hashes prompts as that engine does")
    if args.kv_events and not kv_events_available():
        raise ValueError("--kv-events needs the kv-events extra: pip install 'computenet[kv-events]'")
    if args.kv_events_replay and not args.kv_events:
        raise ValueError("--kv-events-replay needs --kv-events: replay recovers events missed on those")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.max_in_flight == AUTO and not args.engine:
        raise ValueError(
            "--max-in-flight auto needs --engine: it sizes each upstream by the KV cache its /metrics "
            "reports (without --engine nothing is scraped); give a number instead"
        )
    if args.queue_size < 0 or args.queue_timeout <= 0:
        raise ValueError("--queue-size must be >= 0 and --queue-timeout > 0")
    if args.redis is not None and not args.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--redis must be a redis:// or rediss:// URL, got {args.redis!r}")


def max_in_flight(text: str) -> MaxInFlight:
    """argparse type of `--max-in-flight`: a bad value is a usage error naming the flag."""
    try:
        return parse_max_in_flight("--max-in-flight", text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}") from None


def app_from_env() -> GatewayApp:
    """uvicorn's factory in each worker process."""
    settings = json.loads(os.environ[ARGS_ENV])
    if settings.get("access_log"):
        _log_access_to_stderr()
    return build_app(settings)


def _log_access_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("computenet.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


def build_app(settings: dict[str, Any]) -> GatewayApp:
    resources = load_file(settings["filename"]) if settings.get("filename") else []
    keys = [declared_key(r) for r in resources if isinstance(r, DeclaredKey)]
    gateway = Gateway(
        keys=KeyBook(keys, required=bool(settings.get("require_key"))),
        guards=_guards(settings, limited=_declares_limits(resources)),
        tracer=Tracer.from_env(),
        max_in_flight_per_endpoint=settings.get("max_in_flight"),
        region=settings.get("region"),
    )
    if settings.get("upstream"):
        gateway.registry.publish_now(
            STATIC_DEPLOYMENT,
            static_endpoints(settings),
            model=settings["model"],
            policy=PolicySpec.model_validate(settings.get("policy") or DEFAULT_PRESET),
        )
    gateway.configure(
        routes=[r for r in resources if isinstance(r, Route)],
        providers=[r for r in resources if isinstance(r, Provider)],
    )
    gateway.guards.configure_tenants([r for r in resources if isinstance(r, Tenant)])
    if settings.get("control"):
        feed = ControlFeed(settings["control"], gateway.registry, api_key=os.environ.get(API_KEY_ENV))
        gateway.sources.append(feed)
    return GatewayApp(gateway)


def static_endpoints(settings: dict[str, Any]) -> list[Endpoint]:
    """`--upstream`'s servers as one deployment's endpoints, with their engine and KV-event sockets."""
    urls = _urls(settings["upstream"])
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--upstream: {url!r} is not an http:// or https:// URL")
    kv = _per_upstream("--kv-events", settings.get("kv_events"), len(urls))
    replay = _per_upstream("--kv-events-replay", settings.get("kv_events_replay"), len(urls))
    return [
        Endpoint(
            replica=f"{STATIC_DEPLOYMENT}-{i}",
            deployment=STATIC_DEPLOYMENT,
            model=settings["model"],
            url=url,
            engine=settings.get("engine") or "",  # "": any OpenAI-compatible server, nothing to scrape
            kv_events=kv[i],
            kv_events_replay=replay[i],
        )
        for i, url in enumerate(urls)
    ]


def _urls(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


def _per_upstream(flag: str, value: str | None, upstreams: int) -> list[str | None]:
    if not value:
        return [None] * upstreams
    urls = _urls(value)
    if len(urls) != upstreams:
        raise ValueError(
            f"{flag}: give one socket per --upstream, in the same order ({upstreams}), got {len(urls)}"
        )
    for url in urls:
        if not url.startswith(("tcp://", "ipc://")):
            raise ValueError(f"{flag}: {url!r} is not a ZMQ address (tcp://HOST:PORT or ipc://PATH)")
    return list(urls)


def _declares_limits(resources: Sequence[AnyResource]) -> bool:
    """Whether any Tenant, APIKey or Route of the file limits rates or spend."""
    for r in resources:
        if isinstance(r, Tenant) and (r.spec.limits or r.spec.budget):
            return True
        if isinstance(r, DeclaredKey) and (r.spec.limits or r.spec.budget):
            return True
        if isinstance(r, Route) and r.spec.limits:
            return True
    return False


def _guards(settings: dict[str, Any], *, limited: bool) -> Guards:
    """Only what the file asks for: a gateway that limits nothing does no limiter work per request."""
    redis_url = settings.get("redis")
    limiter: RateLimiter | None = None
    ledger: BudgetLedger | None = None
    if redis_url:
        mode = settings.get("failure_mode", "open")
        limiter = RedisRateLimiter(redis_url, failure_mode=mode)
        ledger = RedisBudgetLedger(redis_url, failure_mode=mode)
    elif limited:
        limiter, ledger = MemoryRateLimiter(), MemoryBudgetLedger()
    meter = None
    if settings.get("usage_db"):
        meter = UsageMeter(StoreSink(settings["usage_db"]))
    gates = None
    if settings.get("max_in_flight"):
        gates = Gates(
            max_queue=settings.get("queue_size", 1024), max_wait_s=settings.get("queue_timeout", 30.0)
        )
    return Guards(limiter=limiter, ledger=ledger, gates=gates, meter=meter)


class StoreSink:
    """The usage table of a store at `url`, opened on the first write (from the meter's own task)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: ResourceStore | None = None

    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        if self._store is None:
            self._store = await ResourceStore.open(self.url)
        await self._store.usage.write_usage(records)


def declared_key(doc: DeclaredKey) -> ApiKey:
    """The gateway's record of an `APIKey` document (its id is the document's name)."""
    spec = doc.spec
    if spec.key_from_env is not None:
        text = os.environ.get(spec.key_from_env)
        if not text:
            raise ConfigError(
                f"APIKey {doc.name!r} spec.keyFromEnv: environment variable {spec.key_from_env} is not set"
            )
        digest = hash_key(text.strip())
    else:
        assert spec.key_sha256 is not None
        digest = spec.key_sha256
    limits = spec.limits
    budget = spec.budget
    return ApiKey(
        key_id=doc.name,
        tenant=spec.tenant,
        secret_sha256=digest,
        models=tuple(spec.models),
        expires_at=spec.expires_at.astimezone(UTC).timestamp() if spec.expires_at else None,
        admin=spec.admin,
        limits=KeyLimits(
            requests_per_minute=limits.requests_per_minute if limits else None,
            tokens_per_minute=limits.tokens_per_minute if limits else None,
            budget_usd=budget.limit_usd if budget else None,
            budget_period=budget.period if budget else "month",
        ),
    )
