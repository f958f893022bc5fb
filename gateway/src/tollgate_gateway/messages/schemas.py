"""The Messages API's pure parts: request checks, the key header, the token estimate,
and the rewriting of Ollama's answers and stream events (our ids, the alias as model).

Errors are `ApiError`s; on ``/v1/messages`` they are written in Anthropic's shape
(`errors.anthropic_body`: the type follows from the status).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tollgate_gateway.chat.schemas import Parsed
from tollgate_gateway.errors import ApiError, bad_request
from tollgate_gateway.sse import frame, frame_raw

ROLES = ("user", "assistant")
PING = frame("ping", {"type": "ping"})


def api_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key as Anthropic clients send it: ``x-api-key`` (the SDK, Claude Code with
    ``ANTHROPIC_API_KEY``) or ``Authorization: Bearer`` (``auth_token``,
    ``ANTHROPIC_AUTH_TOKEN``)."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def missing_key() -> ApiError:
    return ApiError(
        401,
        "You didn't provide an API key. Send it as 'x-api-key: <key>' "
        "(ANTHROPIC_API_KEY) or 'Authorization: Bearer <key>' (ANTHROPIC_AUTH_TOKEN).",
        code="invalid_api_key",
    )


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}.") from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _field_error(name: str, expected: str) -> ApiError:
    return bad_request(f"{name}: Input should be {expected}", param=name)


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _field_error(name, f"a number between {lo} and {hi}")


def _content(value: Any, where: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _field_error(where, "a string or a list of content blocks")
    for i, block in enumerate(value):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _field_error(f"{where}.{i}", "a content block with a 'type'")


def parse_request(raw: bytes) -> Parsed:
    """Check a Messages request the way Anthropic does, naming the field at fault."""
    body = _json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request(
            "model: Field required"
            if model is None
            else "model: Input should be a non-empty string",
            param="model",
        )
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise bad_request("max_tokens: Field required", param="max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _field_error("max_tokens", "an integer of at least 1")
    messages = body.get("messages")
    if messages is None:
        raise bad_request("messages: Field required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise _field_error("messages", "a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _field_error(f"messages.{i}", "an object")
        if message.get("role") not in ROLES:
            raise _field_error(f"messages.{i}.role", "'user' or 'assistant'")
        _content(message.get("content"), f"messages.{i}.content")
    system = body.get("system")
    if system is not None:
        _content(system, "system")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _field_error("stream", "a valid boolean")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _field_error("tools", "a list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise _field_error(f"tools.{i}", "a tool with a 'name'")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise _field_error("stop_sequences", "a list of strings")
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    return Parsed(body, model, stream, False, max_tokens)


def estimate_tokens(body: dict[str, Any]) -> int:
    """Input tokens estimated without a tokenizer: characters / 4 over the system prompt,
    each message's role and text (tool blocks as their JSON) and the tools' name,
    description and schema; at least 1. Ollama's own ``message_start`` estimate is the
    same rule; real counts differ by model (typically within a factor of two)."""
    total = 0
    system = body.get("system")
    total += _text_length(system)
    messages = body.get("messages") or []
    for message in messages:
        if isinstance(message, dict):
            total += len(str(message.get("role") or "")) + _text_length(message.get("content"))
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            total += len(str(tool.get("name") or "")) + len(str(tool.get("description") or ""))
            schema = tool.get("input_schema")
            total += len(orjson.dumps(schema)) if schema is not None else 0
    return max(total // 4, 1 if messages or system else 0)


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                total += len(block[key])
        if block.get("type") in ("tool_use", "tool_result"):
            total += len(orjson.dumps(block))
    return total


def rewrite_message(data: dict[str, Any], message_id: str, alias: str) -> tuple[int, int]:
    """A whole answer, in place: our id, the alias; returns (input, output) tokens."""
    data["id"] = message_id
    data["model"] = alias
    data.setdefault("stop_sequence", None)
    if data.get("content") is None:
        data["content"] = []  # Ollama writes null for an empty answer
    usage = data.get("usage") or {}
    return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)


_UNTOUCHED = frozenset({"content_block_start", "content_block_stop", "ping"})


@dataclass(slots=True)
class StreamState:
    """What a Messages stream has told us so far."""

    message_id: str
    alias: str
    input_tokens: int = 0
    output_tokens: int = 0
    deltas: int = 0
    complete: bool = False
    failed: bool = False
    first_delta: bool = field(default=False)

    def passthrough(self, name: str, data: bytes) -> bytes | None:
        """A text or tool-input delta, a block's start or stop, a ping: nothing in them is
        ours to change, so they go out as they came, undecoded (most of a stream's events).
        Only a named event is trusted this way; the rest are decoded and rewritten."""
        if name == "content_block_delta":
            self.deltas += 1
            self.first_delta = self.deltas == 1
            return frame_raw(name, data)
        if name in _UNTOUCHED:
            return frame_raw(name, data)
        return None

    def rewrite(self, name: str, data: dict[str, Any]) -> bytes:
        """One upstream event as the client gets it (a ``ping`` follows ``message_start``,
        as Anthropic sends it)."""
        kind = data.get("type") or name
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                message["id"] = self.message_id
                message["model"] = self.alias
                message.setdefault("stop_reason", None)
                message.setdefault("stop_sequence", None)
                usage = message.get("usage") or {}
                self.input_tokens = int(usage.get("input_tokens") or 0)
            return frame(name or kind, data) + PING
        if kind == "content_block_delta":
            self.deltas += 1
            self.first_delta = self.deltas == 1
        elif kind == "message_delta":
            usage = data.get("usage") or {}
            self.input_tokens = int(usage.get("input_tokens") or self.input_tokens)
            self.output_tokens = int(usage.get("output_tokens") or 0)
            delta = data.get("delta")
            if isinstance(delta, dict):
                delta.setdefault("stop_sequence", None)
        elif kind == "message_stop":
            self.complete = True
        elif kind == "error":
            self.failed = self.complete = True
        return frame(name or kind, data)

    @staticmethod
    def error_event(message: str, kind: str = "api_error") -> bytes:
        return frame("error", {"type": "error", "error": {"type": kind, "message": message}})
