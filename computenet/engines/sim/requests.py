"""OpenAI request bodies the sim accepts, and the errors it answers in OpenAI's shape.

Only the fields that change the simulation are modelled; everything else a
client sends (temperature, stop, tools, ...) is accepted and ignored, as a
real engine would accept it.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .tokens import chat_token_ids, encode, valid_ids


class RequestError(Exception):
    """A request the sim refuses; rendered as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}
        return {"error": error}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str = ""  # image and audio parts carry no text and cost no tokens here


class ChatMessage(_Lenient):
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Lenient):
    include_usage: bool = False


class GenerationRequest(_Lenient):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int = Field(default=0, ge=0)  # vLLM's extra: no stop before this many tokens
    ignore_eos: bool = False  # vLLM's extra; the sim stops only at its planned length anyway
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    kv_transfer_params: dict[str, Any] | None = None  # vLLM's disaggregated prefill (see transfer.py)

    @property
    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    def output_limit(self) -> int | None:
        return self.max_tokens

    def prompt_token_ids(self) -> list[int]:
        raise NotImplementedError

    def check_limits(self) -> None:
        limit = self.output_limit()
        if limit is not None and self.min_tokens > limit:
            message = f"min_tokens ({self.min_tokens}) must be less than or equal to max_tokens ({limit})"
            raise RequestError(400, message, param="min_tokens")


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_token_ids(self) -> list[int]:
        return chat_token_ids((message.role, message.text()) for message in self.messages)


class CompletionRequest(GenerationRequest):
    prompt: str | list[int] | list[str]

    def prompt_token_ids(self) -> list[int]:
        return prompt_ids(self.prompt)


def prompt_ids(prompt: str | list[int] | list[str]) -> list[int]:
    """Token ids of a completion prompt: text, token ids, or a one-element list of text."""
    if isinstance(prompt, str):
        ids = encode(prompt)
    elif not prompt:
        ids = []
    elif isinstance(prompt[0], int):
        ids = [int(token) for token in prompt]
        if not valid_ids(ids):
            raise RequestError(400, "prompt token ids must not be negative", param="prompt")
    elif len(prompt) != 1:
        raise RequestError(400, "sim serves one prompt per request, not a batch", param="prompt")
    else:
        ids = encode(str(prompt[0]))
    if not ids:
        raise RequestError(400, "prompt must not be empty", param="prompt")
    return ids


class TokenizeRequest(_Lenient):
    """vLLM's /tokenize body: a completion `prompt` or chat `messages`."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True  # chat only, as in vLLM

    def token_ids(self) -> list[int]:
        if self.messages is not None:
            pairs = ((message.role, message.text()) for message in self.messages)
            return chat_token_ids(pairs, add_generation_prompt=self.add_generation_prompt)
        if self.prompt is None:
            raise RequestError(400, "give either prompt or messages", param="prompt")
        return encode(self.prompt)


class DetokenizeRequest(_Lenient):
    model: str | None = None
    tokens: list[int]


_Request = TypeVar("_Request", bound=BaseModel)


def parse_request(kind: type[_Request], raw: bytes) -> _Request:
    """Decode and validate a body, turning every problem into a 400 that names the field."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object", code="invalid_json")
    try:
        request = kind.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(map(str, first["loc"])) or None
        raise RequestError(400, f"{param}: {first['msg']}", param=param) from exc
    if isinstance(request, GenerationRequest):
        if request.n != 1:
            raise RequestError(400, "sim serves n=1 only", param="n")
        request.check_limits()
    return request
