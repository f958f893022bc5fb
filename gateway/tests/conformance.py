"""Response bodies checked against the official SDKs' own types, strictly.

The ``openai`` and ``anthropic`` SDKs describe every body as pydantic models, generated
from the providers' published API definitions. The SDKs themselves parse leniently
(``construct``: anything goes); here a body must *validate* (``model_validate``: right
types, known discriminators), carry every field the type requires, and carry no field
the type does not know, at every level. The SDK types mark some fields optional that
OpenAI's OpenAPI document lists as required and nullable; those are named in
`SPEC_REQUIRED` and checked too. `KNOWN_EXTRAS` lists, per type, the fields Ollama sends
(and the API documents) that the SDK's type lacks.
"""

from __future__ import annotations

from typing import Any

import pydantic

# Required (nullable) in OpenAI's OpenAPI document, optional in the SDK's types.
SPEC_REQUIRED: dict[str, tuple[str, ...]] = {
    "openai.types.chat.chat_completion.Choice": ("logprobs",),
    "openai.types.chat.chat_completion_message.ChatCompletionMessage": ("refusal",),
    "openai.types.completion_choice.CompletionChoice": ("logprobs",),
}
KNOWN_EXTRAS: dict[str, frozenset[str]] = {
    "openai.types.responses.response.Response": frozenset(
        {"store", "presence_penalty", "frequency_penalty"}
    ),
}


def _name(model: type[pydantic.BaseModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def problems(value: Any, raw: Any, path: str = "$") -> list[str]:
    """Every place where ``raw`` (JSON) and its parsed model ``value`` disagree."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        if not isinstance(raw, dict):
            return [f"{path}: expected an object"]
        cls = type(value)
        fields = {(f.alias or name): (name, f) for name, f in cls.model_fields.items()}
        extra = set(raw) - set(fields) - KNOWN_EXTRAS.get(_name(cls), frozenset())
        found += [f"{path}.{key}: not in {cls.__name__}" for key in sorted(extra)]
        required = {k for k, (_, f) in fields.items() if f.is_required()}
        required |= set(SPEC_REQUIRED.get(_name(cls), ()))
        found += [f"{path}.{key}: required, missing" for key in sorted(required - set(raw))]
        for key, (name, _) in fields.items():
            if key in raw:
                found += problems(getattr(value, name), raw[key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(raw, list):
        for i, (item, raw_item) in enumerate(zip(value, raw, strict=True)):
            found += problems(item, raw_item, f"{path}[{i}]")
    return found


def assert_conforms(model: type[pydantic.BaseModel], raw: Any) -> Any:
    """Validate ``raw`` as ``model``; return the parsed value."""
    value = model.model_validate(raw)
    assert problems(value, raw) == [], f"{model.__name__}: {problems(value, raw)}"
    return value
