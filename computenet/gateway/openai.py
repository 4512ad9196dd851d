"""What the gateway reads and writes of OpenAI bodies — and nothing more.

The request body is forwarded as the client sent it: unknown fields pass through
untouched. The gateway reads `model`, `stream`, `max_tokens` and the prompt's size
(for rate limits and budgets), and may splice in `stream_options.include_usage` so
that streams report usage. Responses are read for `usage`; when a backend sends
none, the gateway counts and adds it, marking the record as estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# Used when a request names no max_tokens: what the admission charge assumes.
DEFAULT_MAX_TOKENS = 256
CHARS_PER_TOKEN = 4  # the usual English-text rule of thumb; corrected by real usage later


class BadRequest(ValueError):
    """A request body the gateway refuses; the message names the field and the fix."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class ParsedRequest:
    body: bytes  # what goes upstream
    model: str
    stream: bool
    max_tokens: int
    prompt_tokens_estimate: int
    content: Any = None  # the prompt as sent (`messages`, `prompt` or `input`), for prefix routing
    user: str | None = None  # the body's `user`: a session key when no x-session-id header is sent


_KINDS = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/embeddings": "input"}


def parse_request(path: str, body: bytes) -> ParsedRequest:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("`model` is required: the name of a model from `GET /v1/models`", "model")
    field = _KINDS[path]
    content = payload.get(field)
    if content is None:
        raise BadRequest(f"`{field}` is required for {path}", field)
    if field == "messages" and not isinstance(content, list):
        raise BadRequest("`messages` must be a list of {role, content} objects", "messages")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false", "stream")
    max_tokens = _max_tokens(payload)
    if stream:
        options = payload.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise BadRequest("`stream_options` must be an object", "stream_options")
        if options is None:
            body = _splice_stream_options(body)
        elif not options.get("include_usage"):  # rare: worth re-serialising to get real usage
            payload["stream_options"] = {**options, "include_usage": True}
            body = orjson.dumps(payload)
    user = payload.get("user")
    return ParsedRequest(
        body,
        model,
        stream,
        max_tokens,
        estimate_tokens(content),
        content,
        user if isinstance(user, str) else None,
    )


def _max_tokens(payload: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"`{name}` must be a positive integer", name)
        return value
    return DEFAULT_MAX_TOKENS


def estimate_tokens(content: Any) -> int:
    """A cheap prompt-size estimate for admission; real usage corrects it afterwards."""
    return max(1, _chars(content) // CHARS_PER_TOKEN)


def _chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_chars(item) for item in content)
    if isinstance(content, dict):
        return _chars(content.get("content")) + _chars(content.get("text"))
    return 4 if isinstance(content, int) else 0


def _splice_stream_options(body: bytes) -> bytes:
    """Ask the backend for the usage chunk without re-serialising the client's JSON."""
    start = body.index(b"{") + 1
    return body[:start] + b'"stream_options":{"include_usage":true},' + body[start:]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False


def usage_of(payload: Any) -> Usage | None:
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        cached_tokens=_count(cached),
    )


def _count(value: Any) -> int:
    """A token count as a backend reported it; anything but a non-negative number counts as 0."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def complete_json(body: bytes, prompt_estimate: int) -> tuple[bytes, Usage]:
    """The usage of a non-streamed answer; adds an estimated `usage` when the backend sent none."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, Usage(prompt_estimate, 0, 0, estimated=True)
    usage = usage_of(payload)
    if usage is not None:
        return body, usage
    if not isinstance(payload, dict):
        return body, Usage(prompt_estimate, 0, 0, estimated=True)
    choices = payload.get("choices")
    completion = 0
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            completion += estimate_tokens(choice.get("message") or choice.get("text") or "")
    usage = Usage(prompt_estimate, completion, 0, estimated=True)
    payload["usage"] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    body = orjson.dumps(payload)
    return body, usage


class StreamTally:
    """Follows an SSE stream as it is relayed: content chunks, the usage chunk, [DONE].

    It looks at bytes, not JSON, except for the one chunk that carries `usage`, so
    relaying a 64-chunk stream costs a few substring searches per network read.
    """

    __slots__ = ("_tail", "chunks", "content_chunks", "done", "usage")

    def __init__(self) -> None:
        self.chunks = 0
        self.content_chunks = 0
        self.usage: Usage | None = None
        self.done = False
        self._tail = b""

    def feed(self, data: bytes) -> None:
        self.chunks += data.count(b"data: {")
        if self.usage is None:  # only needed to estimate a count the backend did not send
            self.content_chunks += _non_empty(data, b'"content":') + _non_empty(data, b'"text":')
        if b'"usage":{' in data or b'"usage": {' in data or self._tail:
            self._find_usage(self._tail + data)
        if b"data: [DONE]" in data:
            self.done = True

    def _find_usage(self, data: bytes) -> None:
        self._tail = b""
        for event in data.split(b"\n\n"):
            if b'"usage"' not in event:
                continue
            line = event.strip()
            if not line.startswith(b"data: "):
                continue
            try:
                payload = orjson.loads(line[6:])
            except orjson.JSONDecodeError:
                self._tail = event  # split across two reads: wait for the rest
                continue
            usage = usage_of(payload)
            if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
                self.usage = usage

    def final_usage(self, prompt_estimate: int) -> Usage:
        if self.usage is not None:
            return self.usage
        # Each content chunk of an OpenAI-style stream carries about one token.
        return Usage(prompt_estimate, self.content_chunks, 0, estimated=True)


def _non_empty(data: bytes, key: bytes) -> int:
    """Occurrences of `key` followed by a non-empty string, with or without a space after the colon."""
    found = data.count(key + b'"') + data.count(key + b' "')
    return found - data.count(key + b'""') - data.count(key + b' ""')


def usage_chunk(model: str, usage: Usage) -> bytes:
    """An OpenAI-shaped usage chunk, for streams whose backend sent none."""
    payload = {
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"
