"""Deterministic "inference": text, JSON, tool calls, token counts and embeddings.

Everything here is a pure function of the model name and the conversation, so tests can
compute what the stand-in will answer. Nothing is learned and nothing is random.

Token counting (documented, so callers can assert on it):

* prompt tokens = sum over messages of (whitespace-separated words in the content + 4);
  ``/api/generate`` counts its ``system`` and ``prompt`` as one message each;
* completion tokens = number of streamed pieces (one word per piece for plain text);
* embedding input tokens = words in the input + 2 (per input).
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

Turn = tuple[str, str]  # (role, content)

MESSAGE_OVERHEAD = 4
EMBED_OVERHEAD = 2

VOCAB: tuple[str, ...] = (
    "the", "quick", "model", "answers", "every", "question", "with", "calm",
    "clear", "words", "about", "river", "stone", "light", "paper", "garden",
    "signal", "window", "harbor", "engine", "silver", "morning", "orbit", "cedar",
    "lantern", "meadow", "copper", "violet", "thunder", "compass", "anchor", "canyon",
    "ember", "falcon", "glacier", "horizon", "island", "jasmine", "kernel", "ladder",
    "marble", "nectar", "oasis", "pepper", "quartz", "ribbon", "saddle", "timber",
    "umbrella", "valley", "walnut", "yonder", "zephyr", "bridge", "candle", "drift",
    "echo", "fable", "gravel", "hollow", "ivory", "jungle", "kettle", "lively",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the stand-in "decided" to make."""

    id: str
    index: int
    name: str
    arguments: dict[str, Any]


@dataclass(slots=True)
class Plan:
    """What one generation will emit."""

    pieces: list[str]
    done_reason: str
    prompt_tokens: int
    eval_count: int
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def prompt_tokens(turns: Sequence[Turn]) -> int:
    return sum(len(content.split()) + MESSAGE_OVERHEAD for _, content in turns)


def embed_tokens(text: str) -> int:
    return len(text.split()) + EMBED_OVERHEAD


def seed_of(model: str, turns: Sequence[Turn]) -> bytes:
    payload = orjson.dumps([model.lower(), [list(turn) for turn in turns]])
    return hashlib.blake2b(payload, digest_size=16).digest()


def plan_generation(
    model: str,
    turns: Sequence[Turn],
    *,
    length: int,
    num_predict: int | None,
    stop: Sequence[str] = (),
    fmt: Any = None,
    tools: Sequence[dict[str, Any]] = (),
) -> Plan:
    """Decide the whole answer up front; streaming only paces it out."""
    seed = seed_of(model, turns)
    prompt = prompt_tokens(turns)
    calls = choose_tool_calls(turns, tools, seed)
    if calls:
        return Plan([], "stop", prompt, _call_tokens(calls), calls)
    pieces = _json_pieces(fmt, seed, length) if _wants_json(fmt) else word_pieces(seed, length)
    pieces, reason = _limit(pieces, num_predict, stop)
    return Plan(pieces, reason, prompt, len(pieces))


def word_pieces(seed: bytes, count: int) -> list[str]:
    """``count`` pieces: ``"Word"``, ``" word"``, ..., the last one ending in a full stop."""
    stream = hashlib.shake_128(seed).digest(count)
    words = [VOCAB[b % len(VOCAB)] for b in stream]
    pieces = [words[0].capitalize()] + [" " + w for w in words[1:]]
    pieces[-1] += "."
    return pieces


def _limit(
    pieces: list[str], num_predict: int | None, stop: Sequence[str]
) -> tuple[list[str], str]:
    if stop:
        cut = _cut_at_stop(pieces, stop)
        if cut is not None:
            return cut, "stop"
    if num_predict is not None and 0 < num_predict < len(pieces):
        return pieces[:num_predict], "length"
    return pieces, "stop"


def _cut_at_stop(pieces: list[str], stop: Sequence[str]) -> list[str] | None:
    text = ""
    for index, piece in enumerate(pieces):
        text += piece
        hits = [text.find(s) for s in stop if s and s in text]
        if hits:
            keep = text[: min(hits)]
            kept = pieces[:index]
            tail = keep[len("".join(kept)) :]
            return [*kept, tail] if tail else kept
    return None


def _wants_json(fmt: Any) -> bool:
    return fmt == "json" or isinstance(fmt, dict)


def _json_pieces(fmt: Any, seed: bytes, length: int) -> list[str]:
    sentence = "".join(word_pieces(seed, max(length // 2, 1))).rstrip(".")
    value = _value_for_schema(fmt, sentence) if isinstance(fmt, dict) else {"response": sentence}
    text = orjson.dumps(value).decode()
    return split_evenly(text, length)


def _value_for_schema(schema: dict[str, Any], sentence: str) -> Any:
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        return {
            key: _value_for_schema(sub if isinstance(sub, dict) else {}, sentence)
            for key, sub in props.items()
        }
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][0]
    return _default_for_type(kind, sentence)


def _default_for_type(kind: Any, sentence: str) -> Any:
    defaults: dict[str, Any] = {
        "integer": 1,
        "number": 1.5,
        "boolean": True,
        "array": [],
        "null": None,
    }
    return defaults.get(kind, sentence) if isinstance(kind, str) else sentence


def split_evenly(text: str, count: int) -> list[str]:
    """Split ``text`` into at most ``count`` non-empty consecutive pieces."""
    count = max(1, min(count, len(text)))
    size = math.ceil(len(text) / count)
    return [text[i : i + size] for i in range(0, len(text), size)]


def choose_tool_calls(
    turns: Sequence[Turn], tools: Sequence[dict[str, Any]], seed: bytes
) -> list[ToolCall]:
    """Call a tool when the last message is the user's and it names a tool (or says "tool").

    The first tool whose function name appears in the message is chosen; failing that,
    the first tool if the message contains the word "tool". Arguments come from
    ``name=value`` (or ``name: value``) in the message, else the schema's first enum value,
    else a type default (``"example"``, ``1``, ``1.5``, ``true``, ``[]``, ``{}``).
    """
    functions = [f for f in (_function_of(t) for t in tools) if f is not None]
    if not functions or not turns or turns[-1][0] != "user":
        return []
    message = turns[-1][1]
    chosen = _named_function(functions, message)
    if chosen is None:
        return []
    call_id = "call_" + hashlib.blake2b(seed, digest_size=4).hexdigest()
    name = str(chosen.get("name", ""))
    return [ToolCall(call_id, 0, name, _arguments(chosen.get("parameters"), message))]


def _function_of(tool: Any) -> dict[str, Any] | None:
    if not isinstance(tool, dict):
        return None
    function = tool.get("function")
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return function
    return None


def _named_function(functions: list[dict[str, Any]], message: str) -> dict[str, Any] | None:
    lowered = message.lower()
    for function in functions:
        if str(function["name"]).lower() in lowered:
            return function
    return functions[0] if re.search(r"\btools?\b", lowered) else None


def _arguments(parameters: Any, message: str) -> dict[str, Any]:
    if not isinstance(parameters, dict):
        return {}
    props = parameters.get("properties")
    if not isinstance(props, dict):
        return {}
    return {
        key: _argument(key, spec if isinstance(spec, dict) else {}, message)
        for key, spec in props.items()
    }


def _argument(key: str, spec: dict[str, Any], message: str) -> Any:
    pattern = rf"\b{re.escape(key)}\s*[=:]\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s,;]+))"
    match = re.search(pattern, message)
    kind = spec.get("type")
    if match is not None:
        return _coerce(next(g for g in match.groups() if g is not None), kind)
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    defaults: dict[str, Any] = {
        "integer": 1,
        "number": 1.5,
        "boolean": True,
        "array": [],
        "object": {},
    }
    return defaults.get(kind, "example") if isinstance(kind, str) else "example"


def _coerce(text: str, kind: Any) -> Any:
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
    except ValueError:
        return text
    if kind == "boolean":
        return text.lower() in ("true", "1", "yes")
    return text


def _call_tokens(calls: Sequence[ToolCall]) -> int:
    text = orjson.dumps([{"name": c.name, "arguments": c.arguments} for c in calls])
    return max(1, math.ceil(len(text) / 4))


def embedding(model: str, text: str, dim: int, dimensions: int | None = None) -> list[float]:
    """A deterministic unit vector; ``dimensions`` below ``dim`` truncates and renormalises."""
    raw = hashlib.shake_256(f"{model.lower()}\x00{text}".encode()).digest(dim * 2)
    values = [v / 32768.0 - 1.0 for v in struct.unpack(f"<{dim}H", raw)]
    if dimensions is not None and 0 < dimensions < dim:
        values = values[:dimensions]
    return normalise(values)


def normalise(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
