"""Errors in OpenAI's shape, so SDKs raise their usual exception types."""

from __future__ import annotations

from starlette.responses import JSONResponse


def openai_error(
    status: int, message: str, *, type_: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def bad_request(message: str, code: str = "invalid_request") -> JSONResponse:
    return openai_error(400, message, type_="invalid_request_error", code=code)


def model_not_found(model: str) -> JSONResponse:
    message = f"The model `{model}` does not exist; `GET /v1/models` lists the models served here."
    return openai_error(404, message, type_="invalid_request_error", code="model_not_found")


def no_capacity(message: str, retry_after_s: int = 1) -> JSONResponse:
    return openai_error(
        503,
        message,
        type_="service_unavailable",
        code="no_capacity",
        headers={"Retry-After": str(retry_after_s)},
    )
