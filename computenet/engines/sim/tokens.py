"""A tiny deterministic tokenizer and text generator, so the sim needs no weights and no downloads.

A token is a run of word characters or a single punctuation mark. Ids must be
the same in every process (a router hashes prompt blocks and matches them
against a replica's KV events), so they never come from Python's per-process
string hash: punctuation and a fixed list of common words take ids by position,
every other token the crc32 of its UTF-8 text folded into a high range. The id
of a token depends on that token alone, so two texts that share a token prefix
share an id prefix, which is exactly what prefix caching keys on.

Decoding turns known ids back into their text (generated filler round-trips
exactly); a hashed id cannot be inverted and decodes to a `<unkN>` placeholder.
"""

from __future__ import annotations

import re
import string
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain

_TOKEN = re.compile(r"\w+|[^\w\s]")

VOCAB_SIZE = 2**17
HASHED_BASE = 1024  # ids below are the fixed vocabulary, ids from here up are crc32 buckets

# Chat templates wrap every message in role markers; charge a fixed overhead like OpenAI's estimate.
CHAT_TOKENS_PER_MESSAGE = 3  # <|start|> role <|end|>
CHAT_REPLY_PRIMING_TOKENS = 3  # <|start|> assistant <|sep|>

_SPECIAL = (
    "<|pad|>", "<|bos|>", "<|eos|>", "<|start|>", "<|end|>", "<|sep|>", "<|reserved6|>", "<|reserved7|>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|developer|>", "<|function|>", "<|role|>",
    "<|reserved15|>",
)  # fmt: skip
MSG_START, MSG_END, REPLY_SEP = 3, 4, 5
_ROLE_IDS = {"system": 8, "user": 9, "assistant": 10, "tool": 11, "developer": 12, "function": 13}
_OTHER_ROLE = 14

_WORDS = (
    "the", "model", "serves", "tokens", "from", "a", "shared", "pool", "of", "compute",
    "while", "gateway", "routes", "each", "request", "to", "replica", "that", "answers", "first",
    "and", "scheduler", "places", "every", "on", "best", "gpus", "with", "cache", "memory",
    "left", "over",
)  # fmt: skip
_STRIDE = 7  # coprime with len(_WORDS), so consecutive words differ
_COMMON = (
    "i", "you", "he", "she", "it", "we", "they", "is", "are", "was", "were", "be", "been", "have", "has",
    "had", "do", "does", "did", "not", "no", "yes", "in", "at", "by", "for", "as", "or", "but", "if",
    "this", "these", "those", "what", "which", "who", "how", "why", "when", "where", "can", "could",
    "will", "would", "should", "may", "one", "two", "three", "all", "some", "any", "more", "most",
    "other", "into", "about", "than", "then", "so", "there", "their", "them", "its", "our", "your",
    "my", "me", "us", "him", "her", "an", "up", "out", "just", "like", "time", "new", "use", "make",
    "know", "get", "see", "write", "please", "hello", "hi", "thanks", "question", "answer", "text",
    "code", "data", "word", "words", "number", "list", "name", "file", "user", "system", "assistant",
)  # fmt: skip
_VOCAB = (*_SPECIAL, *string.punctuation, *dict.fromkeys(_WORDS + _COMMON))
_IDS = {token: index for index, token in enumerate(_VOCAB) if index >= len(_SPECIAL)}
assert len(_VOCAB) <= HASHED_BASE

_NO_SPACE_BEFORE = frozenset(".,;:!?)]}%")
_NO_SPACE_AFTER = frozenset("([{$")


def token_id(token: str) -> int:
    """The id of one token: its vocabulary index, else a crc32 bucket above `HASHED_BASE`."""
    known = _IDS.get(token)
    if known is not None:
        return known
    return HASHED_BASE + zlib.crc32(token.encode()) % (VOCAB_SIZE - HASHED_BASE)


class _IdMemo(dict[str, int]):
    """token -> id, filled on first sight. `token_id` is a Python call per token; a hit here is a
    C-level dict lookup, which makes `encode` about a third cheaper. Bounded: past `LIMIT`
    distinct tokens it starts afresh (a prompt of random strings must not grow it forever)."""

    LIMIT = 1 << 18

    def __missing__(self, token: str) -> int:
        if len(self) >= self.LIMIT:
            self.clear()
        self[token] = known = token_id(token)
        return known


_MEMO = _IdMemo()


def encode(text: str, start: int = 0, end: int = sys.maxsize) -> list[int]:
    """Token ids of `text` (of `text[start:end]` when a cut falls between tokens); the same text
    gives the same ids in every process."""
    return list(map(_MEMO.__getitem__, _TOKEN.findall(text, start, end)))


PIECE_CHARS = 2048


def encode_pieces(text: str, chars: int = PIECE_CHARS) -> Iterator[tuple[list[int], int]]:
    """`encode(text)` in pieces of about `chars` characters, cut at spaces (no token spans one),
    each with the number of characters it covers.

    A router that needs only the leading blocks of a prompt (those some replica caches,
    and one more) stops early instead of tokenizing 12k tokens it will not look at.
    """
    start = 0
    while start < len(text):
        end = text.find(" ", start + chars)
        if end < 0:
            end = len(text)
        yield encode(text, start, end), end - start
        start = end


def decode(ids: Iterable[int]) -> str:
    """Text of `ids`: words joined by spaces, punctuation attached the way prose writes it."""
    parts: list[str] = []
    previous = ""
    for index in ids:
        token = _VOCAB[index] if 0 <= index < len(_VOCAB) else f"<unk{index}>"
        if parts and token not in _NO_SPACE_BEFORE and previous not in _NO_SPACE_AFTER:
            parts.append(" ")
        parts.append(token)
        previous = token
    return "".join(parts)


def count_tokens(text: str) -> int:
    """Tokens in `text`: word runs plus punctuation marks (`len(encode(text))`, without the ids)."""
    return len(_TOKEN.findall(text))


def count_chat_tokens(message_texts: Iterable[str]) -> int:
    """Prompt tokens of a chat: each message's text plus the template overhead."""
    texts = list(message_texts)
    content = sum(count_tokens(text) for text in texts)
    return content + CHAT_TOKENS_PER_MESSAGE * len(texts) + CHAT_REPLY_PRIMING_TOKENS


def chat_token_ids(messages: Iterable[tuple[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Ids of a chat of (role, text) messages rendered through the sim's fixed template.

    Role markers have fixed ids, so chats sharing their first messages share an id
    prefix and hit the prefix cache; with the generation prompt, the length equals
    `count_chat_tokens` of the texts.
    """
    return list(chain.from_iterable(ids for ids, _ in chat_token_pieces(messages, add_generation_prompt)))


def chat_token_pieces(
    messages: Iterable[tuple[str, str]], add_generation_prompt: bool = True, chars: int = PIECE_CHARS
) -> Iterator[tuple[list[int], int]]:
    """`chat_token_ids` in pieces, as `encode_pieces` gives text: role markers (covering no
    characters), then each message's text in pieces of about `chars` characters."""
    for role, text in messages:
        yield [MSG_START, _ROLE_IDS.get(role, _OTHER_ROLE)], 0
        yield from encode_pieces(text, chars)
        yield [MSG_END], 0
    if add_generation_prompt:
        yield [MSG_START, _ROLE_IDS["assistant"], REPLY_SEP], 0


def generate_pieces(count: int, seed: int = 0) -> list[str]:
    """`count` one-token pieces whose concatenation is the generated text (space-led after the first)."""
    words = [_WORDS[(seed + i * _STRIDE) % len(_WORDS)] for i in range(count)]
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def valid_ids(ids: Sequence[int]) -> bool:
    """Whether a token-id prompt is usable: every id non-negative.

    Not bounded by `VOCAB_SIZE`, so ids from the simulated model's real tokenizer replay unchanged.
    """
    return all(index >= 0 for index in ids)
