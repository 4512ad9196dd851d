"""`computenet gateway` in front of static upstreams: what `--engine`, `--kv-events` and `--policy`
make of them, and the errors for flags that do not fit together."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from computenet.cli.gateway import build_app
from computenet.cli.main import main
from computenet.engines.sim import SimConfig
from computenet.engines.sim.server import create_app as create_sim_app
from computenet.pools.processes import free_port

from ..servers import serve

SYSTEM = {"role": "system", "content": " ".join(f"rule {i}: answer briefly and cite." for i in range(60))}


async def test_sim_upstreams_with_kv_events_are_routed_by_what_their_engines_cache() -> None:
    """Two real sim servers publishing KV events on ZMQ, declared with the flags alone: the gateway
    follows both streams (its /metrics counts their batches) and sends a conversation's next turns
    to the replica whose engine reported its system prompt."""
    async with contextlib.AsyncExitStack() as stack:
        urls, events, replays = [], [], []
        for _ in range(2):
            events.append(f"tcp://127.0.0.1:{free_port()}")
            replays.append(f"tcp://127.0.0.1:{free_port()}")
            config = SimConfig(
                model="m", time_scale=50, kv_events_endpoint=events[-1], kv_events_replay_endpoint=replays[-1]
            )
            sim = create_sim_app(config)
            await stack.enter_async_context(sim.router.lifespan_context(sim))
            urls.append(await stack.enter_async_context(serve(sim)))
        app = build_app(
            {
                "model": "m",
                "upstream": ",".join(urls),
                "engine": "sim",
                "kv_events": ",".join(events),
                "kv_events_replay": ",".join(replays),
                "policy": "precise-prefix",
            }
        )
        await app.gw.start()
        stack.push_async_callback(app.gw.close)
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=await stack.enter_async_context(serve(app)), timeout=10)
        )

        async def replica_of(question: str) -> str:
            body = {
                "model": "m",
                "max_tokens": 2,
                "messages": [SYSTEM, {"role": "user", "content": question}],
            }
            resp = await client.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            return resp.headers["x-computenet-replica"]

        first = await replica_of("q0")
        async with asyncio.timeout(5):  # the engine's events reach the gateway's index
            while not app.gw.kv_index.blocks(first):
                await asyncio.sleep(0.02)
        assert {await replica_of(f"q{i}") for i in range(1, 6)} == {first}
        metrics = (await client.get("/metrics")).text
        assert f'computenet_gateway_kv_event_batches_total{{endpoint="{first}"}}' in metrics


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kv-events", "tcp://127.0.0.1:1"], "--kv-events needs --engine"),
        (["--engine", "sim", "--kv-events", "tcp://127.0.0.1:1"], "one socket per --upstream"),
        (["--engine", "sim", "--kv-events", "http://a:1,http://b:1"], "is not a ZMQ address"),
        (
            ["--engine", "sim", "--kv-events-replay", "tcp://a:1,tcp://b:1"],
            "--kv-events-replay needs --kv-events",
        ),
        (["--max-in-flight", "auto"], "--max-in-flight auto needs --engine"),
        (["--max-in-flight", "0"], "argument --max-in-flight: must be a positive integer or auto, got '0'"),
        (["--max-in-flight", "lots"], "argument --max-in-flight: must be a positive integer or auto"),
    ],
)
def test_flags_that_do_not_fit_together_exit_2_naming_the_flag(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["gateway", "--model", "m", "--upstream", "http://127.0.0.1:9,http://127.0.0.1:10", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_kv_events_without_the_extra_installed_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("computenet.cli.gateway.kv_events_available", lambda: False)
    with pytest.raises(SystemExit) as exited:
        flags = ["--engine", "sim", "--kv-events", "tcp://127.0.0.1:1"]
        main(["gateway", "--model", "m", "--upstream", "http://127.0.0.1:9", *flags])
    assert exited.value.code == 2
    assert "pip install 'computenet[kv-events]'" in capsys.readouterr().err


def test_an_unknown_engine_or_policy_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    for flag, value in (("--engine", "tgi"), ("--policy", "fastest")):
        with pytest.raises(SystemExit) as exited:
            main(["gateway", "--model", "m", "--upstream", "http://127.0.0.1:9", flag, value])
        assert exited.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
