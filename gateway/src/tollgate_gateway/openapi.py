"""The OpenAPI document at /openapi.json: the admin API (from FastAPI) and the proxy.

The proxy routes bypass FastAPI (see `main.GatewayApp`), so they are described here by
hand: what Tollgate itself checks in a request, what it answers, and every error status it
can send, in each API's error shape. The admin API's validation errors are answered 400 in
the OpenAI error shape (see `errors`), not FastAPI's 422, and the document says so. A fuzz
test (`tests/test_fuzz_openapi.py`) holds the gateway to this document.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

MAX_INT = 2**31 - 1

OPENAI_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
OLLAMA_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
ERROR_TEXT = {
    400: "The request is malformed (the message and `param` say what).",
    401: "No key, or a key that is unknown, revoked, disabled or expired.",
    403: "Not allowed.",
    404: "No such model alias, or the key may not use it.",
    405: "Method not allowed.",
    409: "Conflict with the current state.",
    413: "The body is larger than TOLLGATE_MAX_BODY_BYTES.",
    429: "A limit was reached (requests, tokens, concurrency, budget, logins); see Retry-After.",
    500: "A bug of ours (logged with the request id).",
    502: "The model server failed or could not be reached.",
    503: "The model server is busy, or Postgres/Redis is unavailable; see Retry-After.",
    504: "The model server did not answer in time.",
}
PROXY_ERRORS = (400, 401, 403, 404, 413, 429, 500, 502, 503, 504)
ADMIN_ERRORS = (400, 401, 403, 404, 409, 429, 500, 503)

MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "additionalProperties": False,
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"type": "string"},
        "name": {"type": "string"},
        "tool_call_id": {"type": "string"},
    },
}
_MODEL = {"type": "string", "minLength": 1, "description": "A model alias."}
_COUNT = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_INT}
OPENAI_COMMON = {
    "model": _MODEL,
    "stream": {"type": ["boolean", "null"]},
    "max_tokens": _COUNT,
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "n": {"type": ["integer", "null"], "const": 1},
}
TEXTS = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
    ]
}
USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}
REQUESTS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **OPENAI_COMMON,
            "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
            "max_completion_tokens": _COUNT,
        },
    },
    "/v1/completions": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {**OPENAI_COMMON, "prompt": TEXTS},
    },
    "/v1/embeddings": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {"model": _MODEL, "input": TEXTS},
    },
    "/api/chat": {
        "type": "object",
        "required": ["model"],
        "properties": {
            "model": _MODEL,
            "messages": {"type": ["array", "null"], "items": MESSAGE},
            "stream": {"type": ["boolean", "null"]},
            "options": {"type": ["object", "null"]},
        },
    },
    "/api/generate": {
        "type": "object",
        "required": ["model"],
        "properties": {
            "model": _MODEL,
            "prompt": {"type": ["string", "null"]},
            "stream": {"type": ["boolean", "null"]},
            "options": {"type": ["object", "null"]},
        },
    },
    "/api/embed": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {"model": _MODEL, "input": TEXTS},
    },
    "/api/embeddings": {
        "type": "object",
        "required": ["model"],
        "properties": {"model": _MODEL, "prompt": {"type": ["string", "null"]}},
    },
    "/api/show": {
        "type": "object",
        "required": ["model"],
        "properties": {"model": _MODEL},
    },
}
RESPONSES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "type": "object",
        "required": ["id", "object", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "model": {"type": "string"},
            "choices": {"type": "array"},
            "usage": USAGE,
        },
    },
    "/v1/completions": {
        "type": "object",
        "required": ["id", "object", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "model": {"type": "string"},
            "choices": {"type": "array"},
            "usage": USAGE,
        },
    },
    "/v1/embeddings": {
        "type": "object",
        "required": ["object", "data", "model"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array"},
            "model": {"type": "string"},
            "usage": USAGE,
        },
    },
    "/api/chat": {
        "type": "object",
        "required": ["model"],
        "properties": {"model": {"type": "string"}, "message": {"type": "object"}},
    },
    "/api/generate": {
        "type": "object",
        "required": ["model"],
        "properties": {"model": {"type": "string"}, "response": {"type": "string"}},
    },
    "/api/embed": {
        "type": "object",
        "required": ["model", "embeddings"],
        "properties": {"model": {"type": "string"}, "embeddings": {"type": "array"}},
    },
    "/api/embeddings": {
        "type": "object",
        "required": ["embedding"],
        "properties": {"embedding": {"type": "array"}},
    },
    "/api/show": {
        "type": "object",
        "properties": {
            "modelfile": {"type": "string"},
            "details": {"type": "object"},
            "capabilities": {"type": "array"},
        },
    },
}
_HI = [{"role": "user", "content": "Say hello."}]
EXAMPLES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "chat-small", "messages": _HI, "max_tokens": 32},
    "/v1/completions": {"model": "chat-small", "prompt": "Say hello.", "max_tokens": 32},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": ["Hello", "World"]},
    "/api/chat": {"model": "chat-small", "messages": _HI, "stream": False},
    "/api/generate": {"model": "chat-small", "prompt": "Say hello.", "stream": False},
    "/api/embed": {"model": "text-embedding-3-small", "input": "Hello"},
    "/api/embeddings": {"model": "text-embedding-3-small", "prompt": "Hello"},
    "/api/show": {"model": "chat-small"},
}
STREAMS = {
    "/v1/chat/completions": "text/event-stream",
    "/v1/completions": "text/event-stream",
    "/api/chat": "application/x-ndjson",
    "/api/generate": "application/x-ndjson",
}
# One item of a stream: a server-sent event (its `data` a chunk's JSON, or [DONE]), or one
# NDJSON line (an Ollama chunk, or {"error": ...} when the stream broke).
STREAM_ITEMS: dict[str, dict[str, Any]] = {
    "text/event-stream": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    },
    "application/x-ndjson": {"type": "object"},
}
SUMMARIES = {
    "/v1/chat/completions": "Chat completion (OpenAI API)",
    "/v1/completions": "Text completion (OpenAI API)",
    "/v1/embeddings": "Embeddings (OpenAI API)",
    "/api/chat": "Chat (Ollama API)",
    "/api/generate": "Generate (Ollama API)",
    "/api/embed": "Embeddings (Ollama API)",
    "/api/embeddings": "Embeddings, legacy (Ollama API)",
    "/api/show": "Model details (Ollama API): what the alias may reveal",
}
GETS: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/models": (
        "Models the key may use (OpenAI API)",
        {
            "type": "object",
            "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array"}},
        },
    ),
    "/api/tags": (
        "Models the key may use (Ollama API)",
        {"type": "object", "required": ["models"], "properties": {"models": {"type": "array"}}},
    ),
    "/api/ps": (
        "Running models (Ollama API; always empty)",
        {"type": "object", "required": ["models"], "properties": {"models": {"type": "array"}}},
    ),
    "/api/version": (
        "Gateway version (Ollama API)",
        {"type": "object", "required": ["version"], "properties": {"version": {"type": "string"}}},
    ),
}


def _errors(codes: tuple[int, ...], schema: dict[str, Any]) -> dict[str, Any]:
    return {
        str(code): {
            "description": ERROR_TEXT[code],
            "content": {"application/json": {"schema": schema}},
        }
        for code in codes
    }


def proxy_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    security: list[dict[str, list[str]]] = [{"ApiKey": []}]
    for path, request in REQUESTS.items():
        native = path.startswith("/api/")
        tag = "Ollama API" if native else "OpenAI API"
        ok: dict[str, Any] = {"application/json": {"schema": RESPONSES[path]}}
        if path in STREAMS:
            ok[STREAMS[path]] = {"schema": STREAM_ITEMS[STREAMS[path]]}
        paths[path] = {
            "post": {
                "tags": [tag],
                "summary": SUMMARIES[path],
                "operationId": "proxy_" + path.strip("/").replace("/", "_").replace(".", "_"),
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": request, "example": EXAMPLES[path]}},
                },
                "responses": {
                    "200": {
                        "description": "The model's answer (streamed when asked).",
                        "content": ok,
                    },
                    **_errors(PROXY_ERRORS, OLLAMA_ERROR if native else OPENAI_ERROR),
                },
            }
        }
    for path, (summary, schema) in GETS.items():
        native = path.startswith("/api/")
        paths[path] = {
            "get": {
                "tags": ["Ollama API" if native else "OpenAI API"],
                "summary": summary,
                "operationId": "proxy_" + path.strip("/").replace("/", "_"),
                "security": security,
                "responses": {
                    "200": {
                        "description": summary,
                        "content": {"application/json": {"schema": schema}},
                    },
                    **_errors((401, 500, 503), OLLAMA_ERROR if native else OPENAI_ERROR),
                },
            }
        }
    return paths


def _fix_admin(paths: dict[str, Any]) -> None:
    """FastAPI documents 422 with its own shape; Tollgate answers 400 in the OpenAI shape."""
    for item in paths.values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code, response in _errors(ADMIN_ERRORS, OPENAI_ERROR).items():
                responses.setdefault(code, response)


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=__doc__
            )
            _fix_admin(document.get("paths", {}))
            document["paths"] = {**proxy_paths(), **document.get("paths", {})}
            components = document.setdefault("components", {})
            components.setdefault("securitySchemes", {})["ApiKey"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "A Tollgate API key (tg-...), from an ApiKey's Secret.",
            }
            components["securitySchemes"]["AdminToken"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "An access token from POST /admin/login.",
            }
            for path, item in document["paths"].items():
                if path.startswith("/admin/") and path != "/admin/login":
                    for operation in item.values():
                        operation["security"] = [{"AdminToken": []}]
            app.openapi_schema = copy.deepcopy(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
