"""The sim's HTTP surface in-process: OpenAI shapes, errors, models, tokenize, health and metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sim_testkit import MODEL, SimClientFactory, chat_body, scrape, wait_for

from computenet.engines.sim import SimAdapter
from computenet.engines.sim.tokens import chat_token_ids, count_chat_tokens, count_tokens, encode


async def test_chat_completion_with_usage(sim: httpx.AsyncClient) -> None:
    response = await sim.post("/v1/chat/completions", json=chat_body("Hello there, sim!", max_tokens=7))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert count_tokens(choice["message"]["content"]) == 7
    prompt_tokens = count_chat_tokens(["Hello there, sim!"])
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 7,
        "total_tokens": prompt_tokens + 7,
    }


async def test_chat_without_max_tokens_stops_at_default_length(make_sim: SimClientFactory) -> None:
    sim = await make_sim(default_max_tokens=5)
    body = (await sim.post("/v1/chat/completions", json=chat_body())).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 5


async def test_max_completion_tokens_wins_over_max_tokens(sim: httpx.AsyncClient) -> None:
    body = chat_body(max_tokens=9, max_completion_tokens=3)
    usage = (await sim.post("/v1/chat/completions", json=body)).json()["usage"]
    assert usage["completion_tokens"] == 3


async def test_chat_content_parts_count_their_text(sim: httpx.AsyncClient) -> None:
    parts = [{"type": "text", "text": "one two"}, {"type": "image_url", "image_url": {"url": "x"}}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": parts}]}
    usage = (await sim.post("/v1/chat/completions", json=body)).json()["usage"]
    assert usage["prompt_tokens"] == count_chat_tokens(["one two"])


async def test_text_completion_with_usage(sim: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0.7}
    response = await sim.post("/v1/completions", json=body)
    assert response.status_code == 200
    payload = response.json()
    assert payload["object"] == "text_completion"
    assert count_tokens(payload["choices"][0]["text"]) == 4
    assert payload["choices"][0]["finish_reason"] == "length"
    assert payload["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}


async def test_text_completion_accepts_token_ids(sim: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": [101, 2023, 2003, 102], "max_tokens": 2}
    assert (await sim.post("/v1/completions", json=body)).json()["usage"]["prompt_tokens"] == 4


async def test_min_tokens_and_ignore_eos(make_sim: SimClientFactory) -> None:
    sim = await make_sim(default_max_tokens=5)
    body = chat_body(min_tokens=9, ignore_eos=True)
    usage = (await sim.post("/v1/chat/completions", json=body)).json()["usage"]
    assert usage["completion_tokens"] == 9
    refused = await sim.post("/v1/chat/completions", json=chat_body(min_tokens=9, max_tokens=3))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "min_tokens"


async def test_tokenize_prompt_and_messages(sim: httpx.AsyncClient) -> None:
    text = await sim.post("/tokenize", json={"model": MODEL, "prompt": "Hello, world!"})
    assert text.json() == {
        "count": 4,
        "max_model_len": 131072,
        "tokens": encode("Hello, world!"),
        "token_strs": None,
    }
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    chat = (await sim.post("/tokenize", json={"model": MODEL, "messages": messages})).json()
    assert chat["tokens"] == chat_token_ids([("system", "Be brief."), ("user", "Hi!")])
    assert chat["count"] == count_chat_tokens(["Be brief.", "Hi!"])
    bare = (await sim.post("/tokenize", json={"messages": messages, "add_generation_prompt": False})).json()
    assert bare["tokens"] == chat["tokens"][: bare["count"]] and bare["count"] < chat["count"]


async def test_detokenize_round_trips_generated_text(sim: httpx.AsyncClient) -> None:
    reply = (
        await sim.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 12})
    ).json()
    text = reply["choices"][0]["text"]
    tokens = (await sim.post("/tokenize", json={"prompt": text})).json()["tokens"]
    assert (await sim.post("/detokenize", json={"model": MODEL, "tokens": tokens})).json() == {"prompt": text}
    wrong = await sim.post("/detokenize", json={"model": "other", "tokens": tokens})
    assert wrong.status_code == 404
    assert (await sim.post("/tokenize", json={"model": MODEL})).status_code == 400


async def test_unknown_model_is_404_in_openai_shape(sim: httpx.AsyncClient) -> None:
    response = await sim.post("/v1/chat/completions", json={**chat_body(), "model": "gpt-9"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "gpt-9" in error["message"]


CHAT = "/v1/chat/completions"
ONE_MESSAGE = '"model": "sim-test", "messages": [{"role": "user"}]'


@pytest.mark.parametrize(
    ("path", "content", "param"),
    [
        (CHAT, "{not json", None),
        (CHAT, "[1, 2]", None),
        (CHAT, '{"model": "sim-test"}', "messages"),
        (CHAT, '{"model": "sim-test", "messages": []}', "messages"),
        (CHAT, "{" + ONE_MESSAGE + ', "n": 2}', "n"),
        (CHAT, "{" + ONE_MESSAGE + ', "max_tokens": 0}', "max_tokens"),
        ("/v1/completions", '{"model": "sim-test"}', "prompt"),
        ("/v1/completions", '{"model": "sim-test", "prompt": ["a", "b"]}', "prompt"),
        ("/v1/completions", '{"model": "sim-test", "prompt": ""}', "prompt"),
        ("/v1/completions", '{"model": "sim-test", "prompt": [-1]}', "prompt"),
    ],
)
async def test_malformed_requests_are_400(
    sim: httpx.AsyncClient, path: str, content: str, param: str | None
) -> None:
    response = await sim.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    assert error["message"]
    assert error["param"] == param


async def test_prompt_beyond_context_is_400(make_sim: SimClientFactory) -> None:
    sim = await make_sim(max_model_len=32)
    response = await sim.post("/v1/chat/completions", json=chat_body("word " * 40))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


async def test_models_health_and_unknown_paths(sim: httpx.AsyncClient) -> None:
    models = (await sim.get("/v1/models")).json()
    assert models["object"] == "list"
    assert [(card["id"], card["owned_by"]) for card in models["data"]] == [(MODEL, "computenet-sim")]
    assert models["data"][0]["max_model_len"] == 131072
    assert (await sim.get("/health")).status_code == 200
    missing = await sim.get("/v1/embeddings")
    assert missing.status_code == 404
    assert "message" in missing.json()["error"]
    assert (await sim.get("/v1/chat/completions")).status_code == 405


async def test_metrics_count_tokens_and_requests(sim: httpx.AsyncClient) -> None:
    before = await scrape(sim)
    assert before["vllm:num_requests_running"] == 0
    for max_tokens in (3, 5):
        await sim.post("/v1/chat/completions", json=chat_body("Hello there, sim!", max_tokens=max_tokens))
    after = await scrape(sim)
    assert after["vllm:generation_tokens_total"] == 8
    assert after["vllm:prompt_tokens_total"] == 2 * count_chat_tokens(["Hello there, sim!"])
    assert after["vllm:request_success_total"] == 2
    assert after["vllm:time_to_first_token_seconds_count"] == 2
    assert after["vllm:inter_token_latency_seconds_count"] == 2 + 4
    assert after["vllm:e2e_request_latency_seconds_count"] == 2
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:kv_cache_usage_perc"] == 0


async def test_metrics_are_labelled_like_vllm(sim: httpx.AsyncClient) -> None:
    await sim.post("/v1/chat/completions", json=chat_body(max_tokens=2))
    text = (await sim.get("/metrics")).text
    assert f'vllm:num_requests_running{{model_name="{MODEL}"}} 0.0' in text
    assert f'vllm:request_success_total{{finished_reason="length",model_name="{MODEL}"}} 1.0' in text
    assert f'vllm:num_preemptions_total{{model_name="{MODEL}"}} 0.0' in text
    [info] = [line for line in text.splitlines() if line.startswith("vllm:cache_config_info{")]
    assert 'block_size="16"' in info and 'enable_prefix_caching="True"' in info and info.endswith(" 1.0")
    assert 'num_gpu_blocks="' in info and 'gpu_memory_utilization="0.9"' in info


async def test_vllm_parser_reads_the_sim(sim: httpx.AsyncClient) -> None:
    await sim.post("/v1/chat/completions", json=chat_body("Hello there, sim!", max_tokens=3))
    load = SimAdapter().parse_metrics((await sim.get("/metrics")).text)
    assert (load.running, load.waiting, load.kv_cache_usage) == (0, 0, 0)
    assert (load.prompt_tokens_total, load.generation_tokens_total) == (
        count_chat_tokens(["Hello there, sim!"]),
        3,
    )


async def test_requests_beyond_max_num_seqs_wait(make_sim: SimClientFactory) -> None:
    sim = await make_sim(max_num_seqs=2, time_scale=4)  # ~75 ms per pair of 20-token requests
    requests = [
        asyncio.create_task(sim.post("/v1/chat/completions", json=chat_body(max_tokens=20))) for _ in range(5)
    ]
    seen: list[tuple[float, float]] = []

    async def three_waiting() -> bool:
        metrics = await scrape(sim)
        seen.append((metrics["vllm:num_requests_running"], metrics["vllm:num_requests_waiting"]))
        return seen[-1] == (2, 3)

    await wait_for(three_waiting)
    responses = await asyncio.gather(*requests)
    assert all(response.status_code == 200 for response in responses)
    assert max(running for running, _ in seen) == 2
    final = await scrape(sim)
    assert (final["vllm:num_requests_running"], final["vllm:num_requests_waiting"]) == (0, 0)
    assert final["vllm:request_success_total"] == 5
