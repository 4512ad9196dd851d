"""Two `computenet gateway` processes sharing one real Redis, in front of one `sim` replica.

Nothing is faked: redis-server, the sim engine and both gateways are real processes on
127.0.0.1. This is the distributed mode's promise: a limit or a budget declared once
holds for the whole fleet of gateways, not once per replica.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis_server import RedisServer

from computenet.pools.processes import free_port, free_ports

from .harness import wait_for

pytestmark = pytest.mark.e2e

LIMITED_KEY = "sk-limited-0123456789"
BUDGETED_KEY = "sk-budgeted-0123456789"
RPM = 120

GATEWAY_FILE = f"""
apiVersion: computenet.io/v1
kind: Route
metadata: {{name: m}}
spec:
  targets: [{{deployment: upstream, price: {{input: 0, output: 1000}}}}]
---
apiVersion: computenet.io/v1
kind: Tenant
metadata: {{name: limited}}
spec: {{limits: {{requestsPerMinute: {RPM}}}}}
---
apiVersion: computenet.io/v1
kind: Tenant
metadata: {{name: budgeted}}
spec: {{budget: {{limitUsd: 0.05, period: day}}}}
---
apiVersion: computenet.io/v1
kind: APIKey
metadata: {{name: limited-key}}
spec: {{tenant: limited, keyFromEnv: LIMITED_KEY}}
---
apiVersion: computenet.io/v1
kind: APIKey
metadata: {{name: budgeted-key}}
spec: {{tenant: budgeted, keyFromEnv: BUDGETED_KEY}}
"""


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _exited(procs: list[subprocess.Popen[bytes]]) -> bool:
    return any(p.poll() is not None for p in procs)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[list[str]]:
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "LIMITED_KEY": LIMITED_KEY, "BUDGETED_KEY": BUDGETED_KEY}
    try:
        with RedisServer.started() as redis:
            sim_port = free_port()
            sim = [sys.executable, "-m", "computenet.engines.sim", "--model", "m", "--port", str(sim_port)]
            procs.append(_start([*sim, "--time-scale", "200"], env, tmp_path / "sim.log"))
            manifest = tmp_path / "gateway.yaml"
            manifest.write_text(GATEWAY_FILE)
            urls = []
            for i in range(2):
                port = free_port()
                args = [
                    sys.executable,
                    "-m",
                    "computenet",
                    "gateway",
                    "-f",
                    str(manifest),
                    "--port",
                    str(port),
                ]
                args += ["--model", "m", "--upstream", f"http://127.0.0.1:{sim_port}", "--redis", redis.url]
                procs.append(_start([*args, "--no-access-log"], env, tmp_path / f"gateway-{i}.log"))
                urls.append(f"http://127.0.0.1:{port}")
            for url in [f"http://127.0.0.1:{sim_port}", *urls]:
                wait_for(lambda u=url: _healthy(u) or _exited(procs), 30, f"{url} to answer")  # type: ignore[misc]
                assert not _exited(procs), f"a process exited early; see the logs in {tmp_path}"
            yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


async def _fire(
    urls: list[str], key: str, n: int, concurrency: int = 8
) -> tuple[list[httpx.Response], float]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:

        async def one(i: int) -> httpx.Response:
            async with gate:
                return await client.post(f"{urls[i % 2]}/v1/chat/completions", json=body)

        started = time.monotonic()
        replies = await asyncio.gather(*(one(i) for i in range(n)))
        return replies, time.monotonic() - started


async def test_a_tenant_limit_holds_across_two_gateways(fleet: list[str]) -> None:
    replies, elapsed = await _fire(fleet, LIMITED_KEY, 3 * RPM)
    codes = [r.status_code for r in replies]
    ok = codes.count(200)
    assert set(codes) <= {200, 429}
    # One shared bucket: a minute's burst plus what refilled while the test ran. Two
    # separate limits would have let twice the burst through.
    assert RPM <= ok <= RPM + RPM / 60 * elapsed + 2, (ok, elapsed)
    refused = next(r for r in replies if r.status_code == 429)
    assert "tenant:limited" in refused.json()["error"]["message"] and "retry-after" in refused.headers


async def test_a_budget_holds_across_two_gateways_under_concurrency(fleet: list[str]) -> None:
    replies, _ = await _fire(fleet, BUDGETED_KEY, 40, concurrency=16)
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert len(ok) + len(refused) == 40
    spent = sum(r.json()["usage"]["completion_tokens"] for r in ok) * 1000 / 1e6
    assert spent <= 0.05 + 1e-9 and len(ok) >= 5  # $0.005 per request reserved: at most 10 fit
    assert refused[0].json()["error"]["code"] == "insufficient_quota"


async def test_keys_from_the_file_work_on_both_gateways_and_others_do_not(fleet: list[str]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with httpx.AsyncClient(timeout=30) as client:
        for url in fleet:
            good = await client.post(
                f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {BUDGETED_KEY}"}
            )
            bad = await client.post(
                f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-nope"}
            )
            none = await client.post(f"{url}/v1/chat/completions", json=body)
            assert (good.status_code, bad.status_code, none.status_code) == (200, 401, 401)


async def test_a_standalone_gateway_writes_every_usage_record_before_it_exits(tmp_path: Path) -> None:
    from computenet.store import ResourceStore

    db = f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
    sim_port, port = free_ports(2)
    sim = [sys.executable, "-m", "computenet.engines.sim", "--model", "m", "--port", str(sim_port)]
    gateway = [sys.executable, "-m", "computenet", "gateway", "--port", str(port), "--model", "m"]
    gateway += ["--upstream", f"http://127.0.0.1:{sim_port}", "--usage-db", db, "--no-access-log"]
    procs = [
        _start([*sim, "--time-scale", "200"], dict(os.environ), tmp_path / "sim.log"),
        _start(gateway, dict(os.environ), tmp_path / "gateway.log"),
    ]
    try:
        url = f"http://127.0.0.1:{port}"
        for target in (f"http://127.0.0.1:{sim_port}", url):
            wait_for(lambda t=target: _healthy(t) or _exited(procs), 30, f"{target} to answer")  # type: ignore[misc]
        body = {"model": "m", "messages": [{"role": "user", "content": "count me"}], "max_tokens": 4}
        async with httpx.AsyncClient(timeout=30) as client:
            replies = [await client.post(f"{url}/v1/chat/completions", json=body) for _ in range(7)]
        sent = sum(r.json()["usage"]["total_tokens"] for r in replies)
        procs[1].terminate()  # SIGTERM at once: the records are still in the meter's queue
        # uvicorn shuts down gracefully, then re-raises the signal so supervisors see why it ended.
        assert procs[1].wait(timeout=20) in (0, -15)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    store = await ResourceStore.open(db)
    try:
        (total,) = await store.usage.totals()
    finally:
        await store.close()
    assert total.requests == 7 and total.prompt_tokens + total.completion_tokens == sent
