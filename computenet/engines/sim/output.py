"""Turning the engine's token stream into OpenAI's response and chunk objects.

Chat and text completions differ only in how a choice looks, so each has a
small shape class and the streaming and collecting logic is written once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

from .engine import Generation, GenerationPlan

JSONDict = dict[str, Any]
DONE_EVENT = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Envelope:
    """Fields every object of one response repeats."""

    id: str
    created: int
    model: str
    usage_in_chunks: bool = False  # with include_usage, OpenAI puts `"usage": null` on every chunk

    @classmethod
    def new(cls, id_prefix: str, model: str, usage_in_chunks: bool = False) -> Envelope:
        return cls(id_prefix + uuid.uuid4().hex, int(time.time()), model, usage_in_chunks)

    def wrap(self, object_name: str, choices: list[JSONDict], **extra: Any) -> JSONDict:
        body: JSONDict = {"id": self.id, "object": object_name, "created": self.created}
        body |= {"model": self.model, "choices": choices}
        if self.usage_in_chunks:
            body["usage"] = None
        return body | extra


class Shape(Protocol):
    id_prefix: str
    object_name: str
    chunk_object_name: str

    def choice(self, text: str, finish_reason: str) -> JSONDict: ...
    def opening_choice(self) -> JSONDict | None: ...
    def piece_choice(self, piece: str) -> JSONDict: ...
    def final_choice(self, finish_reason: str) -> JSONDict: ...


class ChatShape:
    id_prefix = "chatcmpl-"
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def choice(self, text: str, finish_reason: str) -> JSONDict:
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}

    def opening_choice(self) -> JSONDict | None:
        return self._delta({"role": "assistant", "content": ""}, None)

    def piece_choice(self, piece: str) -> JSONDict:
        return self._delta({"content": piece}, None)

    def final_choice(self, finish_reason: str) -> JSONDict:
        return self._delta({}, finish_reason)

    @staticmethod
    def _delta(delta: JSONDict, finish_reason: str | None) -> JSONDict:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


class TextShape:
    id_prefix = "cmpl-"
    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def choice(self, text: str, finish_reason: str | None) -> JSONDict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def opening_choice(self) -> JSONDict | None:
        return None

    def piece_choice(self, piece: str) -> JSONDict:
        return self.choice(piece, None)

    def final_choice(self, finish_reason: str) -> JSONDict:
        return self.choice("", finish_reason)


def usage(plan: GenerationPlan, cached_tokens: int = 0) -> JSONDict:
    """OpenAI's usage; like vLLM, `prompt_tokens_details.cached_tokens` appears when the prefix cache hit."""
    completion = plan.output_tokens
    body: JSONDict = {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
    }
    if cached_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return body


async def collect(shape: Shape, envelope: Envelope, generation: Generation) -> JSONDict:
    """The whole non-streaming response, once the engine has produced every token."""
    pieces = generation.pieces()
    async with aclosing(pieces):
        text = "".join([piece async for piece in pieces])
    plan = generation.plan
    choice = shape.choice(text, plan.finish_reason)
    return envelope.wrap(shape.object_name, [choice], usage=usage(plan, generation.cached_tokens))


async def sse_events(
    shape: Shape, envelope: Envelope, generation: Generation, include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """`data:` events for a streamed response: pieces, a finish chunk, optional usage, `[DONE]`."""
    pieces: AsyncGenerator[str, None] = generation.pieces()
    plan = generation.plan
    async with aclosing(pieces):
        first = True
        async for piece in pieces:
            opening = shape.opening_choice() if first else None
            if opening is not None:  # sent with the first token, so clients measure a real TTFT
                yield event(envelope.wrap(shape.chunk_object_name, [opening]))
            first = False
            yield event(envelope.wrap(shape.chunk_object_name, [shape.piece_choice(piece)]))
    yield event(envelope.wrap(shape.chunk_object_name, [shape.final_choice(plan.finish_reason)]))
    if include_usage:
        yield event(envelope.wrap(shape.chunk_object_name, [], usage=usage(plan, generation.cached_tokens)))
    yield DONE_EVENT


def event(body: JSONDict) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
