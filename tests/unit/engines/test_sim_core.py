"""The sim's pure parts: tokenizer, generation plans, config checks and the command line."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from computenet.engines.base import args_to_flags
from computenet.engines.sim import SimConfig
from computenet.engines.sim.cli import parse_args
from computenet.engines.sim.engine import ContextLengthExceeded, GenerationPlan, build_core, plan_generation
from computenet.engines.sim.kvcache import chain_hashes
from computenet.engines.sim.tokens import (
    CHAT_REPLY_PRIMING_TOKENS,
    CHAT_TOKENS_PER_MESSAGE,
    HASHED_BASE,
    VOCAB_SIZE,
    chat_token_ids,
    count_chat_tokens,
    count_tokens,
    decode,
    encode,
    encode_pieces,
    generate_pieces,
    token_id,
)


def test_count_tokens_splits_words_and_punctuation() -> None:
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("  spaced   out\n") == 2
    assert count_tokens("") == 0


@pytest.mark.parametrize(
    "text", ["Hello, world!", "  spaced   out\n", "", "naïve café — 3.14 (ok)?", "x" * 50]
)
def test_encode_counts_like_count_tokens_and_stays_in_vocab(text: str) -> None:
    ids = encode(text)
    assert len(ids) == count_tokens(text)
    assert all(0 <= token < VOCAB_SIZE for token in ids)


def test_ids_are_the_same_in_another_process() -> None:
    text = "Zebra crossings, quantum flux and the model: 42 tokens!"
    code = f"from computenet.engines.sim.tokens import encode; print(encode({text!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str(encode(text))
    assert any(token >= HASHED_BASE for token in encode(text))  # out-of-vocabulary words took the crc path


def test_encode_gives_the_same_ids_after_its_memo_starts_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("computenet.engines.sim.tokens._IdMemo.LIMIT", 4)  # cleared many times over
    expected = [token_id(t) for t in ("Zebra", ",", "the", "model", ":", "quantum", "flux", "!")]
    assert encode("Zebra, the model: quantum flux!") == expected
    assert encode("Zebra, the model: quantum flux!") == expected


@pytest.mark.parametrize("chars", [1, 7, 64, 10_000])
def test_encode_in_pieces_is_encode_cut_between_tokens(chars: int) -> None:
    text = "naïve café — 3.14 (ok)? and  spaced   out\n" * 30
    pieces = list(encode_pieces(text, chars))
    assert [token for ids, _ in pieces for token in ids] == encode(text)
    assert sum(covers for _, covers in pieces) == len(text)
    assert len(pieces) > 1 or chars > len(text)


def test_texts_sharing_a_token_prefix_share_an_id_prefix_and_block_hashes() -> None:
    shared = "You are a careful assistant. " * 20
    first, second = encode(shared + "Summarise the report."), encode(shared + "Translate this poem.")
    common = len(encode(shared))
    assert first[:common] == second[:common] and first[common] != second[common]
    assert chain_hashes(first, 16)[: common // 16] == chain_hashes(second, 16)[: common // 16]


def test_generated_text_decodes_back_exactly() -> None:
    text = "".join(generate_pieces(40, seed=5))
    assert decode(encode(text)) == text
    assert decode(encode("the model, answers (first)!")) == "the model, answers (first)!"
    assert decode([HASHED_BASE + 7]).startswith("<unk")


def test_chat_tokens_add_template_overhead() -> None:
    expected = 2 + 3 + 2 * CHAT_TOKENS_PER_MESSAGE + CHAT_REPLY_PRIMING_TOKENS
    assert count_chat_tokens(["Hi there", "How are you"]) == expected
    ids = chat_token_ids([("system", "Hi there"), ("user", "How are you")])
    assert len(ids) == expected


def test_chat_ids_mark_roles_and_share_prefixes() -> None:
    system = ("system", "Answer briefly.")
    one = chat_token_ids([system, ("user", "What is a GPU?")])
    two = chat_token_ids([system, ("user", "What is a TPU?")])
    as_user = chat_token_ids([("user", "Answer briefly."), ("user", "What is a GPU?")])
    assert one[:6] == two[:6] and one != two
    assert one[1] != as_user[1]  # the role marker differs, the text does not
    without_prompt = chat_token_ids([system], add_generation_prompt=False)
    assert len(without_prompt) == len(chat_token_ids([system])) - CHAT_REPLY_PRIMING_TOKENS


def test_generated_text_is_deterministic_and_recounts_exactly() -> None:
    pieces = generate_pieces(25, seed=3)
    assert pieces == generate_pieces(25, seed=3)
    assert pieces != generate_pieces(25, seed=4)
    assert len(pieces) == 25
    assert count_tokens("".join(pieces)) == 25
    assert pieces[0][0] != " " and all(piece.startswith(" ") for piece in pieces[1:])


def _plan(prompt: int, max_tokens: int | None, **limits: Any) -> GenerationPlan:
    return plan_generation(prompt, max_tokens, **{"max_model_len": 100, "default_max_tokens": 16, **limits})


def test_plan_uses_max_tokens_and_reports_length() -> None:
    assert _plan(10, 40) == GenerationPlan(10, 40, "length", seed=10)
    assert _plan(10, None) == GenerationPlan(10, 16, "stop", seed=10)


def test_min_tokens_raises_the_natural_stop() -> None:
    assert _plan(10, None, min_tokens=30) == GenerationPlan(10, 30, "stop", seed=10)
    assert _plan(10, 40, min_tokens=30) == GenerationPlan(10, 40, "length", seed=10)


def test_plan_without_max_tokens_stops_at_context_end() -> None:
    plan = _plan(95, None)
    assert (plan.output_tokens, plan.finish_reason) == (5, "length")


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "min_tokens"), [(90, 11, 0), (100, None, 0), (120, 1, 0), (80, None, 30)]
)
def test_plan_rejects_what_does_not_fit(prompt: int, max_tokens: int | None, min_tokens: int) -> None:
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 100 tokens"):
        _plan(prompt, max_tokens, min_tokens=min_tokens)


@pytest.mark.parametrize(
    "field",
    ["max_num_seqs", "max_num_batched_tokens", "block_size", "max_model_len", "num_gpu_blocks_override"],
)
def test_config_rejects_zero_capacities(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SimConfig(model="m", **{field: 0})


@pytest.mark.parametrize(
    ("field", "value"), [("time_scale", 0), ("time_scale", math.nan), ("gpu_memory_utilization", 1.5)]
)
def test_config_rejects_bad_fractions_and_scales(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SimConfig(model="m", **{field: value})


def test_max_model_len_defaults_to_what_the_kv_cache_holds() -> None:
    _, default = build_core(SimConfig(model="m"))
    assert default == 131072  # llama-3.1-8b's context; an H100 holds far more
    _, tiny = build_core(SimConfig(model="m", num_gpu_blocks_override=8, block_size=16))
    assert tiny == 128
    with pytest.raises(ValueError, match="more than the KV cache holds"):
        build_core(SimConfig(model="m", num_gpu_blocks_override=8, max_model_len=129))


def test_cli_builds_config() -> None:
    argv = ["--model", "m", "--port", "9001", "--max-num-seqs", "4", "--gpu", "A100-80G", "--tp", "2"]
    options = parse_args([*argv, "--no-enable-prefix-caching", "--time-scale", "inf"])
    assert options.port == 9001
    assert options.host == "127.0.0.1"
    assert options.config == SimConfig(
        model="m", max_num_seqs=4, gpu="A100-80G", tp=2, enable_prefix_caching=False, time_scale=math.inf
    )


def test_engine_args_map_to_flags_the_cli_accepts() -> None:
    args = {
        "gpu": "H200",
        "arch": "qwen2.5-7b",
        "gpu_memory_utilization": 0.8,
        "max_num_batched_tokens": 2048,
    }
    config = parse_args(["--model", "m", *args_to_flags(args)]).config
    assert (config.gpu, config.arch, config.gpu_memory_utilization, config.max_num_batched_tokens) == (
        "H200",
        "qwen2.5-7b",
        0.8,
        2048,
    )


def test_cli_layers_extra_catalogues(tmp_path: Path) -> None:
    extra = tmp_path / "gpus.yaml"
    extra.write_text(
        "gpus:\n  - {id: B200, memoryGib: 180, bf16Tflops: 2250, memoryTBps: 8, interconnectGBps: 900}\n"
    )
    flags = args_to_flags({"gpu": "B200", "catalog": [str(extra), str(extra)]})
    config = parse_args(["--model", "m", *flags]).config
    assert config.catalog == (extra, extra)
    core, _ = build_core(config)
    assert core.gpu.id == "B200"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu", "Z80"], "unknown GPU 'Z80'; known: A100-40G, A100-80G"),
        (["--arch", "gpt-9"], "unknown model architecture 'gpt-9'; known:"),
        (["--arch", "llama-3.1-70b", "--gpu", "L4"], "no room left for a KV cache"),
        (["--max-model-len", "200000"], "exceeds llama-3.1-8b's context of 131072"),
        (["--max-num-seqs", "0"], "--max-num-seqs: must be at least 1"),
        (["--time-scale", "0"], "--time-scale: must be positive"),
        (["--ttft-ms", "5"], "unrecognized arguments: --ttft-ms"),
    ],
)
def test_cli_rejects_what_it_cannot_simulate(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--model", "m", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
