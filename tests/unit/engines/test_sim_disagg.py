"""Disaggregated prefill on the sim: vLLM's kv_transfer_params protocol between a prefill and a decode sim."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
import pytest
from sim_drive import core
from sim_testkit import MODEL, SimClientFactory, chat_body, scrape, wait_for

from computenet.engines.sim import SimConfig
from computenet.engines.sim.catalog import load_catalog
from computenet.engines.sim.cli import parse_args
from computenet.engines.sim.scheduler import Phase, SimRequest
from computenet.engines.sim.server import create_app
from computenet.engines.sim.tokens import count_chat_tokens
from computenet.engines.sim.transfer import (
    KVTransferConfig,
    RemotePrefill,
    kv_bytes_per_token_per_gpu,
    kv_transfer_seconds,
)

PRODUCER = KVTransferConfig(kv_role="kv_producer", engine_id="prefill-engine")
CONSUMER = KVTransferConfig(kv_role="kv_consumer", engine_id="decode-engine")
PREFILL_LEG = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None}
LLAMA_8B = load_catalog().model("llama-3.1-8b")


def words(count: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + count))


async def prefill(sim: httpx.AsyncClient, content: str) -> dict[str, Any]:
    """The proxy's first leg, as vLLM's disagg proxies send it."""
    body = chat_body(content, max_tokens=1, stream=False, kv_transfer_params=PREFILL_LEG)
    response = await sim.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    params: dict[str, Any] = response.json()["kv_transfer_params"]
    return params


async def stats(sim: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await sim.get("/sim/stats")).json()
    return body


async def test_a_prefill_answers_with_the_first_token_and_where_its_kv_waits(
    make_sim: SimClientFactory,
) -> None:
    sim = await make_sim(kv_transfer=PRODUCER, kv_side_channel_host="10.0.0.7", kv_side_channel_port=8100)
    content = words(100)
    body = chat_body(content, max_tokens=1, kv_transfer_params=PREFILL_LEG)
    payload = (await sim.post("/v1/chat/completions", json=body)).json()
    prompt = count_chat_tokens([content])
    assert payload["usage"]["completion_tokens"] == 1
    params = payload["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert params["remote_engine_id"] == "prefill-engine"
    assert (params["remote_host"], params["remote_port"], params["tp_size"]) == ("10.0.0.7", 8100, 1)
    assert len(params["remote_block_ids"]) == math.ceil(prompt / 16)
    assert params["remote_request_id"] == payload["id"]
    sources = (await stats(sim))["prompt_tokens_by_source"]
    assert sources == {"local_compute": prompt, "local_cache_hit": 0, "external_kv_transfer": 0}


async def test_the_decode_pulls_the_prompt_instead_of_computing_it(make_sim: SimClientFactory) -> None:
    producer, consumer = await make_sim(kv_transfer=PRODUCER), await make_sim(kv_transfer=CONSUMER)
    content = words(200)
    prompt = count_chat_tokens([content])
    params = await prefill(producer, content)
    decode = await consumer.post(
        "/v1/chat/completions", json=chat_body(content, max_tokens=6, kv_transfer_params=params)
    )
    assert decode.status_code == 200, decode.text
    assert decode.json()["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 6,
        "total_tokens": prompt + 6,
    }
    # The decode computed one prompt token (the last, as vLLM's decode does); the rest came over the link.
    decoded = await stats(consumer)
    assert decoded["prompt_tokens_by_source"] == {
        "local_compute": 1,
        "local_cache_hit": 0,
        "external_kv_transfer": prompt - 1,
    }
    assert decoded["kv_transfer"]["transfers"] == 1 and decoded["kv_transfer"]["tokens"] == prompt
    assert (await stats(producer))["prompt_tokens_by_source"]["local_compute"] == prompt
    metrics = await scrape(consumer)
    assert metrics["vllm:nixl_xfer_time_seconds_count"] == 1
    assert metrics["vllm:nixl_bytes_transferred_sum"] == prompt * LLAMA_8B.kv_bytes_per_token
    assert metrics["vllm:prompt_tokens_by_source_total"] == prompt
    # The pulled blocks are now in the decode's own prefix cache.
    again = (await consumer.post("/v1/chat/completions", json=chat_body(content, max_tokens=1))).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == (prompt - 1) // 16 * 16


async def test_a_streamed_decode_works_like_any_stream(make_sim: SimClientFactory) -> None:
    producer, consumer = await make_sim(kv_transfer=PRODUCER), await make_sim(kv_transfer=CONSUMER)
    params = await prefill(producer, words(40))
    body = chat_body(words(40), max_tokens=4, stream=True, kv_transfer_params=params)
    response = await consumer.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.text.count('"content":"') == 5 and response.text.endswith("data: [DONE]\n\n")


async def test_only_what_the_decode_cache_lacks_is_transferred(make_sim: SimClientFactory) -> None:
    producer, consumer = await make_sim(kv_transfer=PRODUCER), await make_sim(kv_transfer=CONSUMER)
    shared = words(160)
    await consumer.post(
        "/v1/chat/completions", json=chat_body(shared, max_tokens=1)
    )  # warms the decode's cache
    longer = shared + " " + words(80, start=1000)
    params = await prefill(producer, longer)
    await consumer.post(
        "/v1/chat/completions", json=chat_body(longer, max_tokens=2, kv_transfer_params=params)
    )
    prompt = count_chat_tokens([longer])
    hit = count_chat_tokens([shared]) // 16 * 16 - 16  # the chat template's closing tokens differ
    transferred = (await stats(consumer))["kv_transfer"]["tokens"]
    assert hit <= prompt - transferred < prompt


def test_transfer_time_is_prompt_tokens_times_kv_bytes_over_link_bandwidth() -> None:
    per_token = LLAMA_8B.kv_bytes_per_token  # 128 KiB: 2 x 32 layers x 8 kv heads x 128 x 2 bytes
    assert per_token == 128 * 1024
    assert kv_transfer_seconds(1000, LLAMA_8B, tp=1, link_gbps=50) == pytest.approx(1000 * per_token / 50e9)
    assert kv_transfer_seconds(2000, LLAMA_8B, 1, 50) == pytest.approx(
        2 * kv_transfer_seconds(1000, LLAMA_8B, 1, 50)
    )
    assert kv_transfer_seconds(1000, LLAMA_8B, 1, 25) == pytest.approx(
        2 * kv_transfer_seconds(1000, LLAMA_8B, 1, 50)
    )
    # Under tensor parallelism every rank pulls its share of the KV heads over its own link...
    assert kv_bytes_per_token_per_gpu(LLAMA_8B, 2) == per_token / 2
    # ...but no rank holds less than one head: past kv_heads ranks the heads are replicated.
    assert kv_bytes_per_token_per_gpu(LLAMA_8B, 16) == per_token / 8


@pytest.mark.parametrize(("tokens", "link_gbps"), [(100, 50.0), (200, 50.0), (100, 25.0)])
async def test_the_decode_reports_the_modelled_transfer_time(
    make_sim: SimClientFactory, tokens: int, link_gbps: float
) -> None:
    producer = await make_sim(kv_transfer=PRODUCER)
    consumer = await make_sim(kv_transfer=CONSUMER, kv_link_gbps=link_gbps)
    body = {"model": MODEL, "prompt": list(range(5000, 5000 + tokens)), "max_tokens": 1}
    prefilled = await producer.post("/v1/completions", json={**body, "kv_transfer_params": PREFILL_LEG})
    params = prefilled.json()["kv_transfer_params"]
    await consumer.post("/v1/completions", json={**body, "max_tokens": 3, "kv_transfer_params": params})
    seconds = (await stats(consumer))["kv_transfer"]["seconds"]
    assert seconds == pytest.approx(tokens * LLAMA_8B.kv_bytes_per_token / (link_gbps * 1e9))


async def test_the_decode_waits_out_the_transfer_in_real_time(make_sim: SimClientFactory) -> None:
    producer = await make_sim(kv_transfer=PRODUCER)
    # 128 KiB per token over 0.05 GB/s: 2.6 ms per token, ~0.5 s for this prompt, at time scale 1.
    consumer = await make_sim(kv_transfer=CONSUMER, kv_link_gbps=0.05, time_scale=1.0)
    content = words(190)
    params = await prefill(producer, content)
    expected = kv_transfer_seconds(count_chat_tokens([content]), LLAMA_8B, 1, 0.05)
    started = time.monotonic()
    decode = await consumer.post(
        "/v1/chat/completions", json=chat_body(content, max_tokens=2, kv_transfer_params=params)
    )
    elapsed = time.monotonic() - started
    assert decode.status_code == 200
    assert expected <= elapsed < expected + 1.0


async def test_a_client_leaving_during_the_transfer_frees_the_blocks() -> None:
    app = create_app(SimConfig(model=MODEL, kv_transfer=CONSUMER, kv_link_gbps=0.001, time_scale=1.0))
    engine = app.state.engine
    ids = list(range(7000, 7100))
    plan = engine.plan(len(ids), 4)
    remote = RemotePrefill("p", tuple(range(7)), "127.0.0.1", 1)
    generation = engine.generate(plan, "r-1", ids, remote)
    pieces = generation.pieces()
    first = asyncio.ensure_future(anext(pieces))
    await wait_for(lambda: _true(generation.request.phase is Phase.RECEIVING))
    assert engine.kv_cache_usage > 0 and engine.waiting == 1  # counted as waiting, as vLLM counts it
    first.cancel()
    await asyncio.wait([first])
    await pieces.aclose()
    assert generation.request.phase is Phase.ABORTED
    assert (engine.kv_cache_usage, engine.waiting, engine.running) == (0.0, 0, 0)
    await engine.close()


async def _true(value: bool) -> bool:
    return value


def test_the_core_holds_blocks_without_computing_until_the_kv_lands() -> None:
    engine = core()
    request = SimRequest("r", 40, 3, remote_prefill=True)
    engine.add(request)
    result = engine.step(0.0)
    assert result.receiving == [request] and result.duration_s == 0.0 and not result.sampled
    assert request.phase is Phase.RECEIVING and len(request.blocks) == 3
    assert not engine.has_work and engine.num_waiting == 1
    engine.finish_receiving(request)
    step = engine.scheduler.schedule()
    assert step.scheduled == [(request, 1)]  # only the last prompt token is computed


@pytest.mark.parametrize(
    ("config", "params", "extra", "param"),
    [
        (None, PREFILL_LEG, {}, "kv_transfer_params"),
        (CONSUMER, PREFILL_LEG, {}, "kv_transfer_params.do_remote_decode"),
        (PRODUCER, {"do_remote_prefill": True}, {}, "kv_transfer_params.do_remote_prefill"),
        (PRODUCER, PREFILL_LEG, {"stream": True}, "stream"),
        (CONSUMER, {"do_remote_prefill": True, "do_remote_decode": True}, {}, "kv_transfer_params"),
        (CONSUMER, {"do_remote_prefill": "yes"}, {}, "kv_transfer_params.do_remote_prefill"),
        (
            CONSUMER,
            {"do_remote_prefill": True, "remote_engine_id": "p", "remote_host": "h", "remote_port": 1},
            {},
            "kv_transfer_params.remote_block_ids",
        ),
        (
            CONSUMER,
            {
                "do_remote_prefill": True,
                "remote_engine_id": "p",
                "remote_block_ids": [1],
                "remote_host": "h",
                "remote_port": "x",
            },
            {},
            "kv_transfer_params.remote_port",
        ),
        (  # one block cannot hold a 40-token prompt: the params are another request's
            CONSUMER,
            {
                "do_remote_prefill": True,
                "remote_engine_id": "p",
                "remote_block_ids": [1],
                "remote_host": "h",
                "remote_port": 1,
            },
            {},
            "kv_transfer_params.remote_block_ids",
        ),
    ],
)
async def test_bad_kv_transfer_params_get_a_400_naming_the_field(
    make_sim: SimClientFactory,
    config: KVTransferConfig | None,
    params: dict[str, Any],
    extra: dict[str, Any],
    param: str,
) -> None:
    sim = await make_sim(kv_transfer=config)
    body = chat_body(words(30), max_tokens=2, kv_transfer_params=params, **extra)
    response = await sim.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(param + ":")


def test_the_command_line_takes_vllms_kv_transfer_config(capsys: pytest.CaptureFixture[str]) -> None:
    config = '{"kv_connector":"NixlConnector","kv_role":"kv_producer","kv_buffer_device":"cuda"}'
    options = parse_args(
        ["--model", "m", "--port", "9100", "--kv-transfer-config", config, "--kv-link-gbps", "25"]
    )
    transfer = options.config.kv_transfer
    assert (
        transfer is not None
        and transfer.kv_role == "kv_producer"
        and transfer.produces
        and not transfer.consumes
    )
    assert (options.config.kv_link_gbps, options.config.kv_side_channel_port) == (25.0, 9100)
    assert parse_args(["--model", "m"]).config.kv_link_gbps == 50.0
    for bad, says in [
        ('{"kv_connector":"P2pNcclConnector"}', "NixlConnector"),
        ('{"kv_connector":"NixlConnector","kv_role":"both"}', "kv_role"),
        ('{"kv_connector":"NixlConnector","role":"kv_both"}', "unknown field(s) role"),
        ("kv_both", "not valid JSON"),
    ]:
        with pytest.raises(SystemExit) as exited:
            parse_args(["--model", "m", "--kv-transfer-config", bad])
        assert exited.value.code == 2
        assert says in capsys.readouterr().err


@pytest.mark.parametrize("gbps", ["inf", "0", "nan"])
def test_a_link_that_is_not_a_positive_finite_rate_is_a_usage_error(
    gbps: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--model", "m", "--kv-link-gbps", gbps])
    assert exited.value.code == 2
    assert "--kv-link-gbps" in capsys.readouterr().err
