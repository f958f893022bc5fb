"""Ollama model names: ``[host/][namespace/]model[:tag]``, matched case-insensitively."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,79}")


@dataclass(frozen=True, slots=True)
class ModelName:
    """A fully qualified model name, with Ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def key(self) -> str:
        """Case-insensitive identity of the name."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def display(self) -> str:
        """The shortest form, as Ollama lists it (``llama3:latest``, ``me/m:tag``)."""
        if self.host == DEFAULT_HOST and self.namespace == DEFAULT_NAMESPACE:
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse_name(raw: str) -> ModelName | None:
    """Parse a model name; ``None`` when Ollama would call it invalid."""
    text = raw.strip().split("@", 1)[0]
    tag = DEFAULT_TAG
    colon, slash = text.rfind(":"), text.rfind("/")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
    parts = text.split("/")
    if len(parts) > 3:
        return None
    host = parts[0] if len(parts) == 3 else DEFAULT_HOST
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    name = ModelName(host=host, namespace=namespace, model=parts[-1], tag=tag)
    return name if _valid(name) else None


def _valid(name: ModelName) -> bool:
    return all(
        pattern.fullmatch(value) is not None
        for pattern, value in (
            (_HOST, name.host),
            (_NAMESPACE, name.namespace),
            (_MODEL, name.model),
            (_TAG, name.tag),
        )
    )
