"""A tiny deterministic tokenizer and text generator, so the sim needs no weights.

Token counts only have to be stable and roughly proportional to text length:
the gateway meters them and the scheduler's traces replay them. A token is a
run of word characters or a single punctuation mark; generated text is plain
words, so re-counting a completion gives exactly the number of tokens produced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_TOKEN = re.compile(r"\w+|[^\w\s]")

# Chat templates wrap every message in role markers; charge a fixed overhead like OpenAI's estimate.
CHAT_TOKENS_PER_MESSAGE = 3
CHAT_REPLY_PRIMING_TOKENS = 3

_WORDS = (
    "the", "model", "serves", "tokens", "from", "a", "shared", "pool", "of", "compute",
    "while", "gateway", "routes", "each", "request", "to", "replica", "that", "answers", "first",
    "and", "scheduler", "places", "every", "on", "best", "gpus", "with", "cache", "memory",
    "left", "over",
)  # fmt: skip
_STRIDE = 7  # coprime with len(_WORDS), so consecutive words differ


def count_tokens(text: str) -> int:
    """Tokens in `text`: word runs plus punctuation marks."""
    return len(_TOKEN.findall(text))


def count_chat_tokens(message_texts: Iterable[str]) -> int:
    """Prompt tokens of a chat: each message's text plus the template overhead."""
    texts = list(message_texts)
    content = sum(count_tokens(text) for text in texts)
    return content + CHAT_TOKENS_PER_MESSAGE * len(texts) + CHAT_REPLY_PRIMING_TOKENS


def generate_pieces(count: int, seed: int = 0) -> list[str]:
    """`count` one-token pieces whose concatenation is the generated text (space-led after the first)."""
    words = [_WORDS[(seed + i * _STRIDE) % len(_WORDS)] for i in range(count)]
    return [word if i == 0 else " " + word for i, word in enumerate(words)]
