"""Go's ``encoding/json`` as Ollama's handlers see a request body, and as they write JSON.

Gin's ``ShouldBindJSON`` decodes the **first** JSON value of the body into a Go struct
(trailing bytes are ignored). Its errors reach clients verbatim, so the stand-in copies:

* syntax errors, in the scanner's words (``invalid character 'x' looking for beginning
  of object key string``, ``unexpected EOF``); an empty body is ``io.EOF`` (``EOF``);
* type errors, reported for the first offending field in document order:
  ``json: cannot unmarshal number into Go struct field ChatRequest.messages.content of
  type string`` (the top-level struct's bare name, then the JSON path);
* a top-level ``null`` decodes to an empty struct.

Output: ``json.Marshal`` escapes ``<``, ``>``, ``&``, U+2028 and U+2029 inside strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson


class GoJsonError(Exception):
    """The body cannot be decoded; ``str(exc)`` is Go's error text."""


class EmptyBody(GoJsonError):
    """The body holds no JSON value at all (Go's ``io.EOF``)."""

    def __init__(self) -> None:
        super().__init__("EOF")


@dataclass(frozen=True, slots=True)
class Struct:
    """A Go struct: its qualified name (``api.ChatRequest``) and the JSON fields we check.

    Go names the innermost struct being decoded in a type error, and the path from the
    top. ``custom``: the type has its own ``UnmarshalJSON`` (decoding an alias type), so
    errors inside it keep the enclosing struct's name, and ``name`` is that alias's.
    """

    name: str
    fields: Mapping[str, str | Struct | Slice] = field(default_factory=dict)
    custom: bool = False

    @property
    def bare(self) -> str:
        return self.name.rpartition(".")[2]


@dataclass(frozen=True, slots=True)
class Slice:
    """A Go slice of ``elem``; ``name`` overrides ``[]elem`` for named slice types."""

    elem: str | Struct | Slice
    alias: str = ""

    @property
    def name(self) -> str:
        return self.alias or "[]" + type_name(self.elem)


def type_name(go_type: str | Struct | Slice) -> str:
    return go_type if isinstance(go_type, str) else go_type.name


# --- decoding ---------------------------------------------------------------------------------


def decode(raw: bytes, target: Struct) -> dict[str, Any]:
    """Decode ``raw`` into ``target`` the way Go does; raises :class:`GoJsonError`."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:  # only then scan in Python, for Go's verdict
        start = _skip(raw, 0)
        if start == len(raw):
            raise EmptyBody from None
        end = _Scanner(raw).value(start)
        text = raw[start:end]  # Go reads the first value and ignores the rest
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:  # valid for Go: big integers, invalid UTF-8
            value = json.loads(text.decode("utf-8", errors="replace"))
    if value is None:
        return {}
    check(value, target, target)
    assert isinstance(value, dict)
    return value


_WS = b" \t\r\n"
_DIGITS = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"
_ESCAPES = b'"\\/bfnrt'


def _skip(data: bytes, i: int) -> int:
    while i < len(data) and data[i] in _WS:
        i += 1
    return i


def quote_char(c: int) -> str:
    """Go's ``quoteChar`` for one byte of input."""
    if c == ord("'"):
        return "'\\''"
    if c == ord('"'):
        return "'\"'"
    char = chr(c)
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return f"'{named[char]}'"
    if c == 0x0B:
        return "'\\v'"
    if c < 0x20 or c == 0x7F:
        return f"'\\x{c:02x}'"
    if 0x80 <= c < 0xA0 or c in (0xA0, 0xAD):
        return f"'\\u{c:04x}'"
    return f"'{char}'"


class _Scanner:
    """A recursive-descent copy of Go's JSON scanner: same error for the same input."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)

    def _at(self, i: int) -> int:
        if i >= self.n:
            raise GoJsonError("unexpected EOF")
        return self.data[i]

    def _bad(self, c: int, context: str) -> GoJsonError:
        return GoJsonError(f"invalid character {quote_char(c)} {context}")

    def value(self, i: int) -> int:
        i = _skip(self.data, i)
        c = self._at(i)
        if c == ord("{"):
            return self._object(i + 1)
        if c == ord("["):
            return self._array(i + 1)
        if c == ord('"'):
            return self._string(i + 1)
        if c == ord("-") or c in _DIGITS:
            return self._number(i)
        for word in (b"true", b"false", b"null"):
            if c == word[0]:
                return self._literal(i, word)
        raise self._bad(c, "looking for beginning of value")

    def _object(self, i: int) -> int:
        i = _skip(self.data, i)
        if self._at(i) == ord("}"):
            return i + 1
        while True:
            i = _skip(self.data, i)
            c = self._at(i)
            if c != ord('"'):
                raise self._bad(c, "looking for beginning of object key string")
            i = _skip(self.data, self._string(i + 1))
            c = self._at(i)
            if c != ord(":"):
                raise self._bad(c, "after object key")
            i = _skip(self.data, self.value(i + 1))
            c = self._at(i)
            if c == ord("}"):
                return i + 1
            if c != ord(","):
                raise self._bad(c, "after object key:value pair")
            i += 1

    def _array(self, i: int) -> int:
        i = _skip(self.data, i)
        if self._at(i) == ord("]"):
            return i + 1
        while True:
            i = _skip(self.data, self.value(i))
            c = self._at(i)
            if c == ord("]"):
                return i + 1
            if c != ord(","):
                raise self._bad(c, "after array element")
            i += 1

    def _string(self, i: int) -> int:
        while True:
            c = self._at(i)
            if c == ord('"'):
                return i + 1
            if c == ord("\\"):
                i += 1
                escape = self._at(i)
                if escape == ord("u"):
                    for _ in range(4):
                        i += 1
                        if self._at(i) not in _HEX:
                            raise self._bad(self.data[i], "in \\u hexadecimal character escape")
                elif escape not in _ESCAPES:
                    raise self._bad(escape, "in string escape code")
            elif c < 0x20:
                raise self._bad(c, "in string literal")
            i += 1

    def _digits(self, i: int) -> int:
        while i < self.n and self.data[i] in _DIGITS:
            i += 1
        return i

    def _number(self, i: int) -> int:
        if self.data[i] == ord("-"):
            i += 1
            if self._at(i) not in _DIGITS:
                raise self._bad(self.data[i], "in numeric literal")
        i = i + 1 if self.data[i] == ord("0") else self._digits(i)
        if i < self.n and self.data[i] == ord("."):
            i += 1
            if self._at(i) not in _DIGITS:
                raise self._bad(self.data[i], "after decimal point in numeric literal")
            i = self._digits(i)
        if i < self.n and self.data[i] in b"eE":
            i += 1
            if self._at(i) in b"+-":
                i += 1
            if self._at(i) not in _DIGITS:
                raise self._bad(self.data[i], "in exponent of numeric literal")
            i = self._digits(i)
        return i

    def _literal(self, i: int, word: bytes) -> int:
        for k in range(1, len(word)):
            if self._at(i + k) != word[k]:
                context = f"in literal {word.decode()} (expecting {quote_char(word[k])})"
                raise self._bad(self.data[i + k], context)
        return i + len(word)


# --- types ------------------------------------------------------------------------------------


def kind(value: Any) -> str:
    """The JSON kind Go's decoder names in its type errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def type_error(value: Any, want: str, top: Struct, path: str) -> GoJsonError:
    """Go's ``UnmarshalTypeError``; ``top`` is the struct Go names (the innermost one)."""
    what = kind(value)
    if what == "number" and want.startswith(("int", "uint")):
        what = f"number {value!r}"  # Go quotes the literal; ours is re-printed
    if not path:
        return GoJsonError(f"json: cannot unmarshal {what} into Go value of type {want}")
    return GoJsonError(
        f"json: cannot unmarshal {what} into Go struct field {top.bare}.{path} of type {want}"
    )


_SCALARS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "bool": (bool,),
    "float64": (int, float),
    "float32": (int, float),
    "map[string]interface {}": (dict,),
    "map[string]string": (dict,),
}
_INTS = {"int": 63, "int32": 31, "int64": 63}


def check(value: Any, go_type: str | Struct | Slice, top: Struct, path: str = "") -> None:
    """Raise Go's error for the first value (document order) that ``go_type`` cannot hold."""
    if value is None or go_type == "any":
        return
    if isinstance(go_type, Struct):
        if not isinstance(value, dict):
            raise type_error(value, go_type.name, top, path)
        inner = top if go_type.custom or not path else go_type
        for key, item in value.items():
            field_type = _field(go_type, key)
            if field_type is not None:
                check(item, field_type, inner, f"{path}.{key}" if path else key)
        return
    if isinstance(go_type, Slice):
        if not isinstance(value, list):
            raise type_error(value, go_type.name, top, path)
        for item in value:
            check(item, go_type.elem, top, path)
        return
    if go_type in _INTS:
        bits = _INTS[go_type]
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not (ok and -(2**bits) <= value < 2**bits):
            raise type_error(value, go_type, top, path)
        return
    allowed = _SCALARS[go_type]
    if isinstance(value, bool) and bool not in allowed:
        raise type_error(value, go_type, top, path)
    if not isinstance(value, allowed):
        raise type_error(value, go_type, top, path)
    if go_type == "map[string]string" and isinstance(value, dict):
        for item in value.values():  # map keys are not part of Go's field path
            if item is not None and not isinstance(item, str):
                raise type_error(item, "string", top, path)


def _field(struct: Struct, key: str) -> str | Struct | Slice | None:
    """Go matches JSON keys to fields exactly first, then case-insensitively."""
    found = struct.fields.get(key)
    if found is not None:
        return found
    folded = key.casefold()
    for name, go_type in struct.fields.items():
        if name.casefold() == folded:
            return go_type
    return None


# --- output -----------------------------------------------------------------------------------

_HTML_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def marshal(obj: Any) -> bytes:
    """``json.Marshal``: compact JSON with Go's HTML-safe escaping inside strings."""
    data = orjson.dumps(obj)
    for raw, escaped in _HTML_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


# --- the request types Ollama decodes ---------------------------------------------------------

STRING, BOOL, INT, ANY = "string", "bool", "int", "any"
MAP = "map[string]interface {}"

MESSAGE = Struct(  # api.Message decodes itself through `type Alias Message`
    "api.Alias",
    {
        "role": STRING,
        "content": STRING,
        "thinking": STRING,
        "images": Slice(STRING, "[]api.ImageData"),
        "tool_calls": Slice(Struct("api.ToolCall")),
        "tool_name": STRING,
        "tool_call_id": STRING,
    },
    custom=True,
)
TOOLS = Slice(Struct("api.Tool"), "api.Tools")
_COMMON = {"options": MAP, "truncate": BOOL, "shift": BOOL, "logprobs": BOOL, "top_logprobs": INT}

CHAT = Struct(
    "api.ChatRequest",
    {
        "model": STRING,
        "messages": Slice(MESSAGE, "[]api.Message"),
        "stream": BOOL,
        "tools": TOOLS,
        "_debug_render_only": BOOL,
        **_COMMON,
    },
)
GENERATE = Struct(
    "api.GenerateRequest",
    {
        "model": STRING,
        "prompt": STRING,
        "suffix": STRING,
        "system": STRING,
        "template": STRING,
        "context": Slice(INT),
        "stream": BOOL,
        "raw": BOOL,
        "images": Slice(STRING, "[]api.ImageData"),
        "_debug_render_only": BOOL,
        "width": "int32",
        "height": "int32",
        "steps": "int32",
        **_COMMON,
    },
)
EMBED = Struct(
    "api.EmbedRequest",
    {"model": STRING, "input": ANY, "truncate": BOOL, "dimensions": INT, "options": MAP},
)
EMBEDDING = Struct("api.EmbeddingRequest", {"model": STRING, "prompt": STRING, "options": MAP})
SHOW = Struct(
    "api.ShowRequest",
    {
        "model": STRING,
        "system": STRING,
        "template": STRING,
        "verbose": BOOL,
        "options": MAP,
        "name": STRING,
    },
)
PULL = Struct(
    "api.PullRequest",
    {
        "model": STRING,
        "insecure": BOOL,
        "username": STRING,
        "password": STRING,
        "stream": BOOL,
        "name": STRING,
    },
)
_STRINGS = ("quantize", "from", "remote_host", "template", "system", "renderer", "parser")
CREATE = Struct(
    "api.CreateRequest",
    {
        "model": STRING,
        "stream": BOOL,
        **dict.fromkeys(_STRINGS, STRING),
        "files": "map[string]string",
        "adapters": "map[string]string",
        "license": ANY,
        "parameters": MAP,
        "messages": Slice(MESSAGE, "[]api.Message"),
        "requires": STRING,
        "info": MAP,
        "name": STRING,
        "quantization": STRING,
    },
)
COPY = Struct("api.CopyRequest", {"source": STRING, "destination": STRING})
DELETE = Struct("api.DeleteRequest", {"model": STRING, "name": STRING})

_STREAM_OPTIONS = Struct("openai.StreamOptions", {"include_usage": BOOL})
OPENAI_MESSAGE = Struct(
    "openai.Message",
    {
        "role": STRING,
        "content": ANY,
        "reasoning": STRING,
        "tool_calls": Slice(Struct("openai.ToolCall")),
        "name": STRING,
        "tool_call_id": STRING,
    },
)
CHAT_COMPLETION = Struct(
    "openai.ChatCompletionRequest",
    {
        "model": STRING,
        "messages": Slice(OPENAI_MESSAGE),
        "stream": BOOL,
        "stream_options": _STREAM_OPTIONS,
        "max_tokens": INT,
        "seed": INT,
        "stop": ANY,
        "temperature": "float64",
        "frequency_penalty": "float64",
        "presence_penalty": "float64",
        "top_p": "float64",
        "response_format": Struct("openai.ResponseFormat", {"type": STRING}),
        "tools": Slice(Struct("api.Tool")),
        "reasoning": Struct("openai.Reasoning", {"effort": STRING}),
        "reasoning_effort": STRING,
        "logprobs": BOOL,
        "top_logprobs": INT,
        "_debug_render_only": BOOL,
    },
)
COMPLETION = Struct(
    "openai.CompletionRequest",
    {
        "model": STRING,
        "prompt": STRING,
        "frequency_penalty": "float32",
        "max_tokens": INT,
        "presence_penalty": "float32",
        "seed": INT,
        "stop": ANY,
        "stream": BOOL,
        "stream_options": _STREAM_OPTIONS,
        "temperature": "float32",
        "top_p": "float32",
        "suffix": STRING,
        "logprobs": INT,
        "_debug_render_only": BOOL,
    },
)
OPENAI_EMBED = Struct(
    "openai.EmbedRequest",
    {"input": ANY, "model": STRING, "dimensions": INT, "encoding_format": STRING},
)


def marshal_map(obj: Any) -> bytes:
    """``json.Marshal`` of Go maps (``map[string]any``): keys sorted, as Go writes them."""
    data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    for raw, escaped in _HTML_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


# --- the Responses and Anthropic Messages requests (Ollama v0.24) -------------------------

RESPONSES_TOOL = Struct(
    "openai.ResponsesTool",
    {
        "type": STRING,
        "name": STRING,
        "description": STRING,
        "strict": BOOL,
        "parameters": MAP,
    },
)
RESPONSES = Struct(
    "openai.ResponsesRequest",
    {
        "model": STRING,
        "background": BOOL,
        "include": Slice(STRING),
        "input": ANY,
        "instructions": STRING,
        "max_output_tokens": INT,
        "reasoning": Struct(
            "openai.ResponsesReasoning",
            {"effort": STRING, "generate_summary": STRING, "summary": STRING},
        ),
        "temperature": "float64",
        "text": ANY,
        "top_p": "float64",
        "truncation": STRING,
        "tools": Slice(RESPONSES_TOOL),
        "stream": BOOL,
    },
)
ANTHROPIC_TOOL = Struct(
    "anthropic.Tool",
    {
        "type": STRING,
        "name": STRING,
        "description": STRING,
        "input_schema": ANY,
        "max_uses": INT,
    },
)
MESSAGES = Struct(
    "anthropic.MessagesRequest",
    {
        "model": STRING,
        "max_tokens": INT,
        "messages": Slice(Struct("anthropic.MessageParam", {"role": STRING, "content": ANY})),
        "system": ANY,
        "stream": BOOL,
        "temperature": "float64",
        "top_p": "float64",
        "top_k": INT,
        "stop_sequences": Slice(STRING),
        "tools": Slice(ANTHROPIC_TOOL),
        "tool_choice": ANY,
        "thinking": ANY,
        "metadata": ANY,
        "output_config": ANY,
    },
)
