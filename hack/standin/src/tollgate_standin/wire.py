"""Wire helpers: JSON bodies, Go-style error texts, durations and timestamps."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .gojson import EmptyBody, GoJsonError, Struct, decode, kind, marshal, type_error

JSON_CT = "application/json; charset=utf-8"
NDJSON_CT = "application/x-ndjson"
SSE_CT = "text/event-stream"
BODY_KEY: web.RequestKey[dict[str, Any]] = web.RequestKey("tollgate_standin_body", dict)

_GO_DURATION = re.compile(r"([-+]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class BadRequest(Exception):
    """The request cannot be decoded; ``str(exc)`` is the message Ollama would send."""


def dumps(obj: Any) -> bytes:
    """Compact JSON the way Go's ``json.Marshal`` writes it (HTML characters escaped)."""
    return marshal(obj)


def json_response(
    obj: Any, status: int = 200, content_type: str = JSON_CT, newline: bool = False
) -> web.Response:
    """A JSON body; ``newline`` for Go's ``json.Encoder`` (Ollama's ``/v1`` writers)."""
    body = marshal(obj) + b"\n" if newline else marshal(obj)
    return web.Response(body=body, status=status, headers={"Content-Type": content_type})


def error_response(status: int, message: str) -> web.Response:
    """Ollama's native error shape: ``{"error": "..."}``."""
    return json_response({"error": message}, status=status)


def go_quote(text: str) -> str:
    """Approximate Go's ``%q``."""
    return json.dumps(text, ensure_ascii=False)


def timestamp() -> str:
    """Now, formatted like Go's ``time.Time`` JSON (RFC 3339, nanoseconds, UTC)."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}000Z"


def isotime(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def read_json_object(
    request: web.Request, target: Struct, empty: str = "missing request body"
) -> dict[str, Any]:
    """Decode the body into ``target`` the way Gin's ``ShouldBindJSON`` does.

    ``empty`` is the message for a body without any JSON value: Ollama's native handlers
    say ``missing request body``, its ``/v1`` middleware passes Go's ``EOF`` through.
    """
    raw = await request.read()
    try:
        body = decode(raw, target)
    except EmptyBody:
        raise BadRequest(empty) from None
    except GoJsonError as exc:
        raise BadRequest(str(exc)) from None
    request[BODY_KEY] = body
    return body


def go_kind(value: Any) -> str:
    """The JSON kind Go's decoder names in its type errors."""
    return kind(value)


def field_error(struct: str, field: str, want: str, value: Any) -> BadRequest:
    """Go's type error for ``struct.field`` (``struct`` may carry its package: ``api.X``)."""
    return BadRequest(str(type_error(value, want, Struct(struct), field)))


def get_str(body: dict[str, Any], field: str, struct: str) -> str:
    value = body.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise field_error(struct, field, "string", value)
    return value


def get_bool(body: dict[str, Any], field: str, struct: str) -> bool | None:
    value = body.get(field)
    if value is None or isinstance(value, bool):
        return value
    raise field_error(struct, field, "bool", value)


def get_dict(body: dict[str, Any], field: str, struct: str) -> dict[str, Any]:
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise field_error(struct, field, "map[string]interface {}", value)
    return value


def get_list(body: dict[str, Any], field: str, struct: str, want: str) -> list[Any]:
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise field_error(struct, field, want, value)
    return value


def parse_keep_alive(value: Any, default: float) -> float:
    """Seconds from Ollama's ``keep_alive`` (number of seconds or a Go duration).

    Negative means "forever" (``inf``). Bare numeric strings are accepted as seconds.
    """
    if value is None:
        return default
    if isinstance(value, int | float) and not isinstance(value, bool):
        return math.inf if value < 0 else float(value)
    if isinstance(value, str):
        return _parse_duration_text(value)
    go_types = {"bool": "bool", "array": "[]interface {}", "object": "map[string]interface {}"}
    raise BadRequest(f"Unsupported type: '{go_types[go_kind(value)]}'")


def _parse_duration_text(text: str) -> float:
    stripped = text.strip()
    try:
        seconds = float(stripped)
    except ValueError:
        seconds = _go_duration_seconds(stripped)
    return math.inf if seconds < 0 else seconds


def _go_duration_seconds(text: str) -> float:
    if text == "0":
        return 0.0
    match = _GO_DURATION.fullmatch(text)
    if match is None:
        raise BadRequest(f"time: invalid duration {go_quote(text)}")
    sign = -1.0 if match.group(1) == "-" else 1.0
    total = sum(float(n) * _UNIT_SECONDS[u] for n, u in _GO_PART.findall(text))
    return sign * total
