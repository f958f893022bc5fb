"""Ollama v0.24's ``POST /v1/messages`` (``middleware/anthropic.go``, ``anthropic/``).

The Anthropic request becomes a native chat (``system`` a system message, ``tool_result``
blocks tool messages, ``max_tokens`` → ``num_predict``, ``stop_sequences`` → ``stop``);
the answer is a ``message`` or, streaming, ``message_start`` … ``message_stop`` events.
Errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}``. Ollama
routes no ``/v1/messages/count_tokens``; the stand-in does not either. Web search tools
(``web_search_*``) call ollama.com in Ollama and are not served here.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from . import gojson
from .generation import Failure, Metrics, serve_generation
from .inference import chat_request
from .state import STATE
from .textgen import Plan, ToolCall
from .wire import SSE_CT, BadRequest, dumps, json_response, read_json_object

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str, middleware: bool = False) -> web.Response:
    """``anthropic.NewError``; ``middleware``: Gin's JSON (charset, no newline)."""
    body = {
        "type": "error",
        "error": {"type": _TYPES.get(status, "api_error"), "message": message},
        "request_id": "req_" + os.urandom(12).hex(),
    }
    if middleware:
        return json_response(body, status=status)
    return json_response(body, status=status, content_type="application/json", newline=True)


# -- request -----------------------------------------------------------------------------------


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise BadRequest(
            f"json: cannot unmarshal {gojson.kind(content)} into Go value of type "
            "[]anthropic.ContentBlock"
        )
    return content


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(b.get("text") or "")
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def native_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``FromMessagesRequest``: system first, then each message's blocks."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "".join(
            str(b.get("text") or "")
            for b in system
            if isinstance(b, dict) and b.get("type") == "text"
        )
        if text:
            messages.append({"role": "system", "content": text})
    for message in body.get("messages") or []:
        role = str(message.get("role") or "").lower()
        text, calls, results = "", [], []
        for block in _blocks(message.get("content")):
            kind = block.get("type")
            if kind == "text":
                text += str(block.get("text") or "")
            elif kind == "tool_use":
                if not block.get("id"):
                    raise BadRequest("tool_use block missing required 'id' field")
                if not block.get("name"):
                    raise BadRequest("tool_use block missing required 'name' field")
                calls.append({"id": block["id"], "function": {"name": block["name"]}})
            elif kind == "tool_result":
                results.append({"role": "tool", "content": _tool_result_text(block.get("content"))})
            elif kind == "image" and not isinstance(block.get("source"), dict):
                raise BadRequest("invalid image source")
        if role == "user":
            messages.extend(results)
        if text or calls:
            messages.append({"role": role, "content": text, "tool_calls": calls})
        if role != "user":
            messages.extend(results)
    return messages


def native_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.get("name"),
                "description": t.get("description") or "",
                "parameters": t.get("input_schema"),
            },
        }
        for t in body.get("tools") or []
    ]


def estimate_tokens(body: dict[str, Any]) -> int:
    """``anthropic.estimateTokens``: characters / 4 (the input tokens ``message_start`` shows)."""
    total = 0
    system = body.get("system")
    if isinstance(system, str):
        total += len(system)
    elif system is not None:
        total += sum(len(str(b.get("text") or "")) for b in system if isinstance(b, dict))
    messages = body.get("messages") or []
    for message in messages:
        total += len(str(message.get("role") or ""))
        for block in _blocks(message.get("content")):
            total += len(str(block.get("text") or ""))
            if block.get("type") in ("tool_use", "tool_result"):
                total += len(dumps(block))
    for tool in body.get("tools") or []:
        schema = tool.get("input_schema")
        total += len(str(tool.get("name") or "")) + len(str(tool.get("description") or ""))
        total += len(dumps(schema)) if schema is not None else 0
    tokens = total // 4
    return 1 if tokens == 0 and (messages or system is not None) else tokens


# -- answers -----------------------------------------------------------------------------------


def stop_reason(done_reason: str, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_use"
    return {"stop": "end_turn", "length": "max_tokens"}.get(
        done_reason, "stop_sequence" if done_reason else ""
    )


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps(data) + b"\n\n"


class MessagesSse:
    """``anthropic.StreamConverter``: Anthropic's stream events for one generation."""

    content_type = SSE_CT
    stream_headers = {"Cache-Control": "no-cache"}  # the middleware sets it (and keep-alive)

    def __init__(self, model: str, estimated_input: int) -> None:
        self.model = model
        self.id = "msg_" + os.urandom(12).hex()
        self.estimated = estimated_input
        self.started = False
        self.index = 0
        self.text_open = False
        self.calls = 0

    def _message(
        self, content: list[dict[str, Any]] | None, usage: dict[str, int]
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "usage": usage,
        }

    def _start(self, input_tokens: int = 0) -> bytes:
        if self.started:
            return b""
        self.started = True
        usage = {"input_tokens": input_tokens or self.estimated, "output_tokens": 0}
        return _sse("message_start", {"type": "message_start", "message": self._message([], usage)})

    def piece(self, text: str, first: bool) -> bytes:
        out = self._start()
        if not text:
            return out
        if not self.text_open:
            self.text_open = True
            out += _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": self.index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        return out + _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": self.index,
                "delta": {"type": "text_delta", "text": text},
            },
        )

    def _stop_block(self) -> bytes:
        return _sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def tool_calls(self, calls: list[ToolCall], first: bool) -> bytes:
        out = self._start()
        for call in calls:
            if self.text_open:
                out += self._stop_block()
                self.index += 1
                self.text_open = False
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            out += _sse(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
            delta = {"type": "input_json_delta", "partial_json": dumps(call.arguments).decode()}
            out += _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": self.index, "delta": delta},
            )
            out += self._stop_block()
            self.index += 1
            self.calls += 1
        return out

    def done(self, plan: Plan, metrics: Metrics, first: bool) -> bytes:
        out = self._start(plan.prompt_tokens)
        if self.text_open:
            out += self._stop_block()
        delta: dict[str, Any] = {}
        reason = stop_reason(plan.done_reason, self.calls > 0)
        if reason:
            delta["stop_reason"] = reason
        usage = {"input_tokens": plan.prompt_tokens, "output_tokens": plan.eval_count}
        out += _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return out + _sse("message_stop", {"type": "message_stop"})

    def midstream_error(self, message: str, first: bool) -> bytes:
        # The middleware decodes Ollama's {"error": ...} line as an empty chat chunk.
        return self._start()

    def whole(self, plan: Plan, metrics: Metrics) -> web.Response:
        content: list[dict[str, Any]] = []
        if plan.text:
            content.append({"type": "text", "text": plan.text})
        content.extend(
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
            for c in plan.tool_calls
        )
        usage = {"input_tokens": plan.prompt_tokens, "output_tokens": plan.eval_count}
        body = self._message(content or None, usage)
        reason = stop_reason(plan.done_reason, bool(plan.tool_calls))
        body.pop("usage")
        if reason:
            body["stop_reason"] = reason
        body["usage"] = usage
        return json_response(body, content_type="application/json", newline=True)

    def idle(self, reason: str) -> web.Response:
        return self.whole(Plan([], reason, 0, 0), Metrics(1, 1, 0, 1, 0, 1))

    def failure(self, status: int, message: str) -> web.Response:
        return anthropic_error(status, message)


async def messages(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_json_object(request, gojson.MESSAGES, "EOF")
        if not body.get("model"):
            return anthropic_error(400, "model is required", middleware=True)
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens <= 0:
            return anthropic_error(400, "max_tokens is required and must be positive", True)
        if not body.get("messages"):
            return anthropic_error(400, "messages is required", middleware=True)
        options: dict[str, Any] = {"num_predict": max_tokens}
        for key in ("temperature", "top_p", "top_k"):
            if body.get(key) is not None:
                options[key] = body[key]
        if body.get("stop_sequences"):
            options["stop"] = body["stop_sequences"]
        native = {
            "model": body["model"],
            "messages": native_messages(body),
            "tools": native_tools(body),
            "options": options,
            "stream": body.get("stream") is True,
        }
        estimated = estimate_tokens(body)
        gen = chat_request(request.app[STATE], native)
    except BadRequest as exc:
        return anthropic_error(400, str(exc), middleware=True)
    if isinstance(gen, Failure):
        return anthropic_error(gen.status, gen.message)
    return await serve_generation(request, gen, MessagesSse(str(body["model"]), estimated))
