"""Request validation shared by the native and ``/v1`` handlers, in Ollama's order.

Each builder returns a :class:`GenRequest` or a :class:`Failure` (status + Ollama's text)
and raises :class:`BadRequest` when the body itself cannot be decoded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .catalog import COMPLETION, THINKING, ModelRecord
from .generation import Failure, GenRequest
from .names import parse_name
from .state import StandinState
from .textgen import Turn, embed_tokens, embedding
from .wire import (
    BadRequest,
    field_error,
    get_bool,
    get_dict,
    get_list,
    get_str,
    go_quote,
    parse_keep_alive,
)

CHAT = "api.ChatRequest"
GENERATE = "api.GenerateRequest"


def resolve(state: StandinState, raw: str, missing: Failure) -> ModelRecord | Failure:
    """Find a model the way Ollama's handlers do: required, valid, then present."""
    if not raw.strip():
        return missing
    name = parse_name(raw)
    if name is None:
        return Failure(400, "invalid model name")
    record = state.store.get(name)
    return record if record is not None else Failure(404, f"model '{raw}' not found")


def not_found_try_pulling(model: str) -> str:
    """The scheduler's "not found" (embeddings): Go's ``%q``, unlike the handlers' ``'x'``."""
    return f"model {go_quote(model)} not found, try pulling it first"


def chat_request(state: StandinState, body: dict[str, Any]) -> GenRequest | Failure:
    model = get_str(body, "model", CHAT)
    turns = turns_from_messages(get_list(body, "messages", CHAT, "[]api.Message"))
    tools = get_list(body, "tools", CHAT, "api.Tools")
    options = get_dict(body, "options", CHAT)
    stream = get_bool(body, "stream", CHAT) is not False
    keep_alive = parse_keep_alive(body.get("keep_alive"), state.default_keep_alive)
    found = resolve(state, model, Failure(400, "model is required"))
    if isinstance(found, Failure):
        return found
    gen = GenRequest(found, model, turns, keep_alive, stream, options, tools, body.get("format"))
    if not turns and keep_alive == 0:
        gen.idle = "unload"
        return gen
    refusal = refuse(found, model, "chat", body.get("think"))
    if refusal is not None:
        return refusal
    gen.idle = None if turns else "load"
    return gen


def generate_request(state: StandinState, body: dict[str, Any]) -> GenRequest | Failure:
    model = get_str(body, "model", GENERATE)
    prompt = get_str(body, "prompt", GENERATE)
    system = get_str(body, "system", GENERATE)
    options = get_dict(body, "options", GENERATE)
    stream = get_bool(body, "stream", GENERATE) is not False
    keep_alive = parse_keep_alive(body.get("keep_alive"), state.default_keep_alive)
    found = resolve(state, model, Failure(404, f"model '{model}' not found"))
    if isinstance(found, Failure):
        return found
    turns: list[Turn] = [("system", system)] if system else []
    turns.append(("user", prompt))
    gen = GenRequest(found, model, turns, keep_alive, stream, options, [], body.get("format"))
    if not prompt and keep_alive == 0:
        gen.idle = "unload"
        return gen
    refusal = refuse(found, model, "generate", body.get("think"))
    if refusal is not None:
        return refusal
    gen.idle = None if prompt else "load"
    return gen


def refuse(record: ModelRecord, model: str, verb: str, think: Any) -> Failure | None:
    """Ollama's capability checks: thinking first, then completion."""
    wants_thinking = think is True or (isinstance(think, str) and think not in ("", "false"))
    if wants_thinking and THINKING not in record.capabilities:
        return Failure(400, f"{go_quote(model)} does not support thinking")
    if COMPLETION not in record.capabilities:
        return Failure(400, f"{go_quote(model)} does not support {verb}")
    return None


def turns_from_messages(messages: list[Any]) -> list[Turn]:
    turns: list[Turn] = []
    for message in messages:
        if not isinstance(message, dict):
            raise field_error(CHAT, "messages", "api.Message", message)
        # types were checked when the body was decoded (gojson.CHAT)
        turns.append((str(message.get("role") or ""), str(message.get("content") or "")))
    return turns


def embed_inputs(value: Any) -> list[str]:
    """``/api/embed`` ``input``: a string (empty = nothing) or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise BadRequest("invalid input type")


@dataclass(slots=True)
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int
    total_duration: int
    load_duration: int


async def embed_texts(
    state: StandinState,
    record: ModelRecord,
    texts: list[str],
    keep_alive: float,
    dimensions: int | None,
    options: Mapping[str, Any] | None = None,
) -> EmbedResult:
    """Embed under the model's scheduler slot; raises ``ServerBusy`` when the queue is full."""
    start = time.perf_counter_ns()
    num_ctx = state.num_ctx(options)
    try:
        async with state.scheduler.slot(record.key):
            await state.load(record, keep_alive, num_ctx)
            loaded = time.perf_counter_ns()
            dim = state.config.embedding_dim
            vectors = [embedding(record.display, t, dim, dimensions) for t in texts]
            state.loaded.touch(record, keep_alive, num_ctx)
    except asyncio.CancelledError:
        state.stats.cancelled += 1
        raise
    return EmbedResult(
        vectors=vectors,
        prompt_tokens=sum(embed_tokens(t) for t in texts),
        total_duration=max(time.perf_counter_ns() - start, 1),
        load_duration=max(loaded - start, 1),
    )
