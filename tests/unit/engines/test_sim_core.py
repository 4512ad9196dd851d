"""The sim's pure parts: tokenizer, generation plans, config checks, command line, engine slots."""

from __future__ import annotations

import asyncio

import pytest

from computenet.engines.sim import SimConfig
from computenet.engines.sim.cli import parse_args
from computenet.engines.sim.engine import ContextLengthExceeded, GenerationPlan, SimEngine, plan_generation
from computenet.engines.sim.tokens import (
    CHAT_REPLY_PRIMING_TOKENS,
    CHAT_TOKENS_PER_MESSAGE,
    count_chat_tokens,
    count_tokens,
    generate_pieces,
)


def test_count_tokens_splits_words_and_punctuation() -> None:
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("  spaced   out\n") == 2
    assert count_tokens("") == 0


def test_chat_tokens_add_template_overhead() -> None:
    expected = 2 + 3 + 2 * CHAT_TOKENS_PER_MESSAGE + CHAT_REPLY_PRIMING_TOKENS
    assert count_chat_tokens(["Hi there", "How are you"]) == expected


def test_generated_text_is_deterministic_and_recounts_exactly() -> None:
    pieces = generate_pieces(25, seed=3)
    assert pieces == generate_pieces(25, seed=3)
    assert pieces != generate_pieces(25, seed=4)
    assert len(pieces) == 25
    assert count_tokens("".join(pieces)) == 25
    assert pieces[0][0] != " " and all(piece.startswith(" ") for piece in pieces[1:])


def test_plan_uses_max_tokens_and_reports_length() -> None:
    config = SimConfig(model="m", max_model_len=100, default_max_tokens=16)
    assert plan_generation(config, 10, 40) == GenerationPlan(10, 40, "length", seed=10)
    assert plan_generation(config, 10, None) == GenerationPlan(10, 16, "stop", seed=10)


def test_plan_without_max_tokens_stops_at_context_end() -> None:
    config = SimConfig(model="m", max_model_len=100, default_max_tokens=16)
    plan = plan_generation(config, 95, None)
    assert (plan.output_tokens, plan.finish_reason) == (5, "length")


@pytest.mark.parametrize(("prompt", "max_tokens"), [(90, 11), (100, None), (120, 1)])
def test_plan_rejects_what_does_not_fit(prompt: int, max_tokens: int | None) -> None:
    config = SimConfig(model="m", max_model_len=100)
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 100 tokens"):
        plan_generation(config, prompt, max_tokens)


@pytest.mark.parametrize("field", ["max_num_seqs", "kv_cache_tokens", "max_model_len"])
def test_config_rejects_zero_capacities(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SimConfig(model="m", **{field: 0})


def test_config_rejects_negative_delays() -> None:
    with pytest.raises(ValueError, match="ttft_ms"):
        SimConfig(model="m", ttft_ms=-1)


def test_cli_builds_config() -> None:
    options = parse_args(["--model", "m", "--port", "9001", "--max-num-seqs", "4", "--tpot-ms", "2.5"])
    assert options.port == 9001
    assert options.host == "127.0.0.1"
    assert options.config == SimConfig(model="m", max_num_seqs=4, tpot_ms=2.5)


def test_cli_rejects_unknown_args(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--model", "m", "--gpu-memory-utilization", "0.9"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --gpu-memory-utilization" in capsys.readouterr().err


def test_cli_rejects_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--max-num-seqs", "0"])
    assert "--max-num-seqs: must be at least 1" in capsys.readouterr().err


async def test_engine_holds_a_slot_and_kv_until_closed() -> None:
    engine = SimEngine(SimConfig(model="m", ttft_ms=0, tpot_ms=0, kv_cache_tokens=100))
    stream = engine.stream(GenerationPlan(prompt_tokens=20, output_tokens=50, finish_reason="length"))
    assert await anext(stream) == "the"
    await anext(stream)
    assert (engine.running, engine.waiting) == (1, 0)
    assert engine.kv_cache_usage == pytest.approx(0.22)  # 20 prompt + 2 generated
    await stream.aclose()
    assert (engine.running, engine.kv_cache_usage) == (0, 0.0)


async def test_engine_kv_usage_is_capped() -> None:
    engine = SimEngine(SimConfig(model="m", ttft_ms=0, tpot_ms=0, kv_cache_tokens=10))
    stream = engine.stream(GenerationPlan(prompt_tokens=30, output_tokens=5, finish_reason="stop"))
    await anext(stream)
    assert engine.kv_cache_usage == 1.0
    await stream.aclose()


async def test_engine_queues_beyond_max_num_seqs_in_order() -> None:
    engine = SimEngine(SimConfig(model="m", max_num_seqs=2, ttft_ms=0, tpot_ms=1))
    finished: list[int] = []

    async def run(index: int) -> None:
        async for _ in engine.stream(GenerationPlan(1, 3, "length")):
            pass
        finished.append(index)

    tasks = [asyncio.create_task(run(index)) for index in range(4)]
    await asyncio.sleep(0)
    assert (engine.running, engine.waiting) == (2, 2)
    await asyncio.gather(*tasks)
    assert (engine.running, engine.waiting) == (0, 0)
    assert set(finished[:2]) == {0, 1} and set(finished[2:]) == {2, 3}
