"""OpenAI request bodies the sim accepts, and the errors it answers in OpenAI's shape.

Only the fields that change the simulation are modelled; everything else a
client sends (temperature, stop, tools, ...) is accepted and ignored, as a
real engine would accept it.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .tokens import count_chat_tokens, count_tokens


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
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    def output_limit(self) -> int | None:
        return self.max_tokens

    def prompt_tokens(self) -> int:
        raise NotImplementedError


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_tokens(self) -> int:
        return count_chat_tokens(message.text() for message in self.messages)


class CompletionRequest(GenerationRequest):
    prompt: str | list[int] | list[str]

    def prompt_tokens(self) -> int:
        if isinstance(self.prompt, str):
            return count_tokens(self.prompt)
        if not self.prompt:
            raise RequestError(400, "prompt must not be empty", param="prompt")
        if isinstance(self.prompt[0], int):
            return len(self.prompt)  # already token ids
        if len(self.prompt) != 1:
            raise RequestError(400, "sim serves one prompt per request, not a batch", param="prompt")
        return count_tokens(str(self.prompt[0]))


_Request = TypeVar("_Request", bound=GenerationRequest)


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
    if request.n != 1:
        raise RequestError(400, "sim serves n=1 only", param="n")
    return request
