"""Prompt text carries a trace's lengths and prefix sharing onto the wire, token for token."""

from __future__ import annotations

from pathlib import Path

from computenet.engines.sim.tokens import count_tokens
from computenet.workloads import TraceRequest, prompt_text, read_mooncake

MOONCAKE = Path(__file__).resolve().parents[3] / "data" / "traces" / "mooncake_conversation.jsonl"


def _common_words(a: str, b: str) -> int:
    count = 0
    for x, y in zip(a.split(" "), b.split(" "), strict=False):
        if x != y:
            break
        count += 1
    return count


def test_token_count_is_input_tokens() -> None:
    for request in (
        TraceRequest(0.0, 1, 1),
        TraceRequest(0.0, 700, 1),
        TraceRequest(0.0, 1000, 1, (1, 2)),
        TraceRequest(0.0, 300, 1, (1, 2)),  # fewer tokens than its blocks cover
        TraceRequest(0.0, 1500, 1, (1, 2)),  # more tokens than its blocks cover
        TraceRequest(0.0, 40, 1, (-3,), hash_block_tokens=16),
    ):
        text = prompt_text(request, index=4)
        assert count_tokens(text) == request.input_tokens == len(text.split(" "))


def test_shared_leading_ids_share_exactly_their_blocks() -> None:
    a = TraceRequest(0.0, 2000, 1, (10, 11, 12, 13))
    b = TraceRequest(0.0, 1800, 1, (10, 11, 99, 100))
    c = TraceRequest(0.0, 1800, 1, (50, 11, 12, 13))
    assert _common_words(prompt_text(a, 0), prompt_text(b, 1)) == 2 * 512
    assert _common_words(prompt_text(a, 0), prompt_text(c, 2)) == 0
    assert prompt_text(a, 0) == prompt_text(a, 5)  # hash blocks, not positions, decide the text


def test_requests_without_ids_are_unique_and_stable() -> None:
    request = TraceRequest(0.0, 50, 1)
    assert prompt_text(request, 1) == prompt_text(request, 1)
    assert _common_words(prompt_text(request, 1), prompt_text(request, 2)) == 0


def _shared_ids(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    count = 0
    while count < min(len(a), len(b)) and a[count] == b[count]:
        count += 1
    return count


def test_mooncake_rows_keep_their_sharing() -> None:
    trace = read_mooncake(MOONCAKE)
    picked = [0, 1, 2, 10, 30, 66, 133, 134, 137, 191]  # pairs (1, 137), (10, 134), ... share many blocks
    rows = [trace[i] for i in picked]
    texts = [prompt_text(trace[i], i) for i in picked]
    sharing = set()
    for i, (row, text) in enumerate(zip(rows, texts, strict=True)):
        assert count_tokens(text) == row.input_tokens
        for other, other_text in zip(rows[i + 1 :], texts[i + 1 :], strict=True):
            shared = _shared_ids(row.hash_ids, other.hash_ids)
            sharing.add(shared)
            assert _common_words(text, other_text) == min(shared * 512, row.input_tokens, other.input_tokens)
    assert len(sharing) > 2  # pairs sharing 1 block (all of them open alike) and many
