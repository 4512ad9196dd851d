"""Deterministic prompt text for trace requests, so replays against real engines share prefixes.

Traces publish lengths and prefix hashes, never text. To make a real engine's
prefix cache see what the trace describes, every hash id becomes a fixed
block of words: requests that share k leading ids share exactly k blocks of
text, and nothing more, because each block opens with a word naming its id.
Words are common lowercase English, one token each for the `sim` tokenizer
(a `\\w+` run) and about one token each for BPE tokenizers.
"""

from __future__ import annotations

import functools
import random

from .traces import TraceRequest

_WORD_LIST = """
    the of and to in is you that it he was for on are as with his they at be this have from or one had
    by word but not what all were we when your can said there use an each which she do how their if will
    up other about out many then them these so some her would make like him into time has look two more
    write go see number no way could people my than first water been call who oil its now find long down
    day did get come made may part over new sound take only little work know place year live me back give
    most very after thing our just name good sentence man think say great where help through much before
    line right too mean old any same tell boy follow came want show also around form three small set put
    end does another well large must big even such because turn here why ask went men read need land
    different home us move try kind hand picture again change off play spell air away animal house point
    page letter mother answer found study still learn should world school light night
"""
WORDS = tuple(_WORD_LIST.split())  # 200 common words


def prompt_text(request: TraceRequest, index: int = 0) -> str:
    """Exactly `input_tokens` space-separated words; the blocks of `hash_ids` first, then unique words.

    `index` (the request's position in its trace) seeds the text of requests, or tails of requests,
    that no hash id covers, so distinct requests never share text by accident.
    """
    words: list[str] = []
    for hash_id in request.hash_ids:
        if len(words) >= request.input_tokens:
            break
        words.extend(_block(hash_id, request.hash_block_tokens))
    missing = request.input_tokens - len(words)
    if missing > 0:
        words.extend(_unique_words(index, len(words), missing))
    return " ".join(words[: request.input_tokens])


@functools.lru_cache(maxsize=4096)
def _block(hash_id: int, block_tokens: int) -> tuple[str, ...]:
    """The words of one hash block; the first names the id, so different blocks differ at once."""
    rng = random.Random(hash_id)
    return (_tag("h", hash_id), *rng.choices(WORDS, k=block_tokens - 1))


def _unique_words(index: int, offset: int, count: int) -> list[str]:
    rng = random.Random(f"request-{index}-{offset}")
    return [_tag("r", index), *rng.choices(WORDS, k=count - 1)]


def _tag(kind: str, number: int) -> str:
    """One `\\w+` word naming a block or request: `h42`, `hn42` for negative ids."""
    return f"{kind}{number}" if number >= 0 else f"{kind}n{-number}"
