"""A prompt's KV block hashes as the gateway keys the engine's KV events, so the two match.

Precise prefix routing compares the blocks a request will need with the blocks each
replica reported holding; that only works when both sides hash alike. The `sim`
engine's tokenizer, chat template and block hashes are deterministic and importable,
so its hashes are computed here from the prompt's text. vLLM's hashes are not
reproducible outside the engine (seeded per process, algorithm chosen per flag), so
its events are re-keyed from their token ids (`rekey.py`) and its prompts hashed the
same way from the token ids the forwarder got from the engine's `/tokenize`
(`RoutingRequest.token_ids`); engines in `TOKENIZED_BY_ENGINE` work that way.

Tokenizing is the expensive part for the sim (about 0.2 µs a token in Python, so 2-3
ms for the Mooncake trace's mean 12k-token prompt, more than the rest of a routing
decision), and most of a prompt is usually cached nowhere: the hasher reads the prompt
in pieces and stops after the first block no replica holds (`PromptBlocks`). Token ids
from an engine are hashed in pieces the same way.
"""

from __future__ import annotations

from collections.abc import Container, Hashable, Iterable, Iterator, Sequence
from typing import Any, Literal

from computenet.engines.sim.kvcache import BLOCK_SIZE, ROOT_HASH, chain_hashes
from computenet.engines.sim.tokens import chat_token_pieces, encode_pieces

from .pipeline import PromptBlocks, RoutingRequest
from .rekey import adapter_root

TOKENIZED_BY_ENGINE = frozenset({"vllm"})  # engines whose KV events are re-keyed from token ids
TOKEN_PIECE = 512  # token ids hashed at a time before looking for the first block no replica holds

Pieces = Iterable[tuple[list[int], int]]  # token ids, and the characters of prompt text they cover


def engine_block_hashes(
    request: RoutingRequest, engine: str, known: Container[Hashable] | None = None
) -> PromptBlocks | None:
    """The prompt's blocks as `engine` hashes them (an `EngineHasher`); every block when no `known`."""
    if engine == "sim":
        found = _sim_pieces(request.content)
        return leading_blocks(*found, known) if found is not None else None
    ids = request.token_ids
    if engine in TOKENIZED_BY_ENGINE and ids:
        return leading_blocks(_token_pieces(ids), len(ids), known, adapter_root(request.adapter))
    return None


def leading_blocks(
    pieces: Pieces, chars: int, known: Container[Hashable] | None, root: int = ROOT_HASH
) -> PromptBlocks:
    """Block hashes of the token ids in `pieces` (a prompt of `chars` characters of text), chained
    from `root`, up to the first piece that holds a block not in `known`; the length of the rest
    is estimated from the tokens per character read so far."""
    hashes: list[int] = []
    pending: list[int] = []  # ids of the block not yet full
    parent, tokens, read = root, 0, 0
    for ids, covers in pieces:
        tokens, read = tokens + len(ids), read + covers
        pending += ids
        full = len(pending) - len(pending) % BLOCK_SIZE
        if not full:
            continue
        new = chain_hashes(pending[:full], BLOCK_SIZE, parent)
        del pending[:full]
        parent = new[-1]
        hashes += new
        if known is not None and not all(
            map(known.__contains__, new)
        ):  # no replica matches past this: stop reading
            rest = (chars - read) * tokens / read if read else 0.0
            return PromptBlocks(hashes, len(hashes) + int(len(pending) + rest) // BLOCK_SIZE)
    return PromptBlocks(hashes, len(hashes))


def _token_pieces(ids: Sequence[int]) -> Iterator[tuple[list[int], int]]:
    """Token ids in pieces of `TOKEN_PIECE`, each covering its own length ("characters" are ids)."""
    for start in range(0, len(ids), TOKEN_PIECE):
        piece = list(ids[start : start + TOKEN_PIECE])
        yield piece, len(piece)


PromptForm = tuple[Literal["chat", "text", "ids"], Any]


def prompt_form(content: Any) -> PromptForm | None:
    """What a request's `messages` or `prompt` is: chat messages, one text (a batch of one text
    counts as one) or token ids; None when there is nothing to match (no prompt, a blank one, a
    batch of several)."""
    if isinstance(content, list) and content and all(isinstance(m, dict) for m in content):
        return "chat", content
    if isinstance(content, list) and len(content) == 1 and isinstance(content[0], str):
        content = content[0]  # a batch of one prompt
    if isinstance(content, str):
        return ("text", content) if content.strip() else None
    if isinstance(content, list) and content and all(type(i) is int and i >= 0 for i in content):
        return "ids", content
    return None


def _sim_pieces(content: Any) -> tuple[Iterator[tuple[list[int], int]], int] | None:
    """The sim's token ids of a prompt in pieces, and its characters of text; None for a prompt
    the sim would refuse (nothing to match)."""
    form = prompt_form(content)
    if form is None:
        return None
    kind, value = form
    if kind == "chat":
        messages = [(str(m.get("role", "")), _text(m.get("content"))) for m in value]
        return chat_token_pieces(messages), sum(len(text) for _, text in messages)
    if kind == "text":
        return encode_pieces(value), len(value)
    return iter([(value, len(value))]), len(value)  # token ids: one "character" each


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
