"""Errors as clients expect them.

OpenAI routes answer ``{"error": {"message", "type", "param", "code"}}``; Ollama's
native routes (``/api/...``) answer ``{"error": "message"}`` like Ollama itself, so
the official `ollama` client shows the message. Never a stack trace.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

if TYPE_CHECKING:
    from tollgate_gateway.storage.upstream import UpstreamError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}


# Limit refusals (429) by the limit that refused: the `reason` of the metrics, and (prefixed
# with `limit_`) the error class of the usage row and of `tollgate_requests_total`.
_LIMIT_REASONS = {
    ("rate_limit_exceeded", "requests"): "requests",
    ("rate_limit_exceeded", "tokens"): "tokens",
    ("concurrency_limit_exceeded", "requests"): "concurrency",
    ("insufficient_quota", "insufficient_quota"): "budget",
}


def limit_reason(exc: ApiError) -> str | None:
    """requests, tokens, concurrency or budget for a key's limit refusal; None otherwise."""
    if exc.status != 429:
        return None
    return _LIMIT_REASONS.get((exc.code or "", exc.type))


def error_class(exc: ApiError) -> str:
    """The class of an error answer in metrics, usage rows and access lines."""
    reason = limit_reason(exc)
    if reason is not None:
        return f"limit_{reason}"
    return exc.code or exc.type


def invalid_key() -> ApiError:
    return ApiError(
        401,
        "Incorrect API key provided. You can find your API key in the Secret of your ApiKey "
        "resource, or ask your platform team.",
        code="invalid_api_key",
    )


def missing_key() -> ApiError:
    return ApiError(
        401,
        "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
        code="invalid_api_key",
    )


def model_not_found(alias: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{alias}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


NOT_READY_RETRY_SECONDS = 10


def model_not_ready(alias: str) -> ApiError:
    return ApiError(
        503,
        f"The model `{alias}` is not ready yet (its model is still being pulled); "
        f"try again in a moment.",
        type="server_error",
        code="model_not_ready",
        headers={"retry-after": str(NOT_READY_RETRY_SECONDS)},
    )


def internal_error() -> ApiError:
    return ApiError(
        500,
        "The server had an error processing your request.",
        type="server_error",
        code="internal_error",
    )


def service_unavailable(what: str, retry_after: int = 5) -> ApiError:
    """A dependency (the database) is down and the answer cannot be given from memory."""
    return ApiError(
        503,
        f"{what} is temporarily unavailable; please retry.",
        type="server_error",
        code="service_unavailable",
        headers={"retry-after": str(retry_after)},
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def is_native(path: str) -> bool:
    return path.startswith("/api/")


def is_anthropic(path: str) -> bool:
    return path.startswith("/v1/messages")


ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_body(status: int, message: str) -> bytes:
    """Anthropic's error shape; the type follows from the status as Anthropic's does."""
    kind = ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def error_body(
    path: str, status: int, message: str, type_: str, code: str | None, param: str | None
) -> bytes:
    if is_native(path):
        return orjson.dumps({"error": message})
    if is_anthropic(path):
        return anthropic_body(status, message)
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def error_response(path: str, err: ApiError) -> Response:
    body = error_body(path, err.status, err.message, err.type, err.code, err.param)
    return Response(body, err.status, headers=err.headers, media_type="application/json")


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "Invalid request")
        message = f"{param}: {msg}" if param else str(msg)
        return error_response(request.url.path, ApiError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        type_ = _STATUS_TYPES.get(exc.status_code, "server_error")
        err = ApiError(
            exc.status_code, str(exc.detail), type=type_, headers=dict(exc.headers or {})
        )
        return error_response(request.url.path, err)

    @app.exception_handler(DataError)
    async def _bad_value(request: Request, exc: DataError) -> Response:
        # A value the schemas let through but the database refuses (a safety net: the
        # schemas name the field when they catch it first).
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "invalid value"
        return error_response(request.url.path, bad_request(f"Invalid value: {reason}."))

    @app.exception_handler(OperationalError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _database_down(request: Request, exc: Exception) -> Response:
        log.warning("database unavailable on %s: %s", request.url.path, type(exc).__name__)
        return error_response(request.url.path, service_unavailable("The database"))


# --------------------------------------------------------------------------- the model server

_UPSTREAM_FAILURES = {
    "timeout": (504, "The model server did not answer in time.", "upstream_timeout"),
    "unreachable": (502, "The model server cannot be reached.", "upstream_unreachable"),
    "failed": (502, "The model server connection failed: {detail}.", "upstream_error"),
    "broken": (502, "The model server connection broke.", "upstream_error"),
}


def upstream_failure(exc: UpstreamError) -> ApiError:
    """What a client is told when the model server gave no answer (502/504)."""
    status, message, code = _UPSTREAM_FAILURES[exc.kind]
    return ApiError(status, message.format(detail=exc.detail), type="server_error", code=code)


def upstream_error(status: int, body: bytes, alias: str) -> ApiError:
    """Map an upstream HTTP error to what our clients should see."""
    # Imported here: a process that only answers errors (the server's supervisor, which
    # imports this module) must not create metric files of its own.
    from tollgate_gateway import metrics

    message = _ollama_message(body)
    if status == 503:
        metrics.UPSTREAM_ERRORS.labels("overloaded").inc()
        return ApiError(
            503,
            f"The model server is busy ({message}); please retry.",
            type="server_error",
            code="upstream_overloaded",
            headers={"retry-after": "1", "retry-after-ms": "1000"},
        )
    if status == 404:
        return ApiError(
            404,
            f"The model `{alias}` is not available on its model server yet ({message}).",
            code="model_not_found",
            param="model",
        )
    if 400 <= status < 500:
        return ApiError(status if status != 499 else 400, message, param=None)
    metrics.UPSTREAM_ERRORS.labels("http_5xx").inc()
    return ApiError(
        502, f"The model server failed: {message}", type="server_error", code="upstream_error"
    )


def _ollama_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode(errors="replace").strip() or "no details"
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))
    return str(err) if err else "no details"
