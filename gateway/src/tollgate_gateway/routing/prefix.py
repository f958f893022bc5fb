"""The part of a request that decides prompt-cache affinity.

Ollama's runner reuses its KV cache for a prompt sharing a prefix with one it served
recently. A conversation's later turns repeat its system prompt and first user message, so
those (capped at ``max_chars``) are hashed; later turns then follow the first one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts / Anthropic blocks
        parts = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def chat_prefix(messages: Sequence[Any], max_chars: int, system: Any = None) -> bytes | None:
    """System prompt(s) + the first user message, at most ``max_chars`` characters."""
    if max_chars <= 0:
        return None
    pieces: list[str] = []
    if system is not None:
        pieces.append(_text(system))
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            pieces.append(_text(message.get("content")))
        elif role == "user":
            pieces.append(_text(message.get("content")))
            break
    text = "\x1e".join(p for p in pieces if p)[:max_chars]
    return text.encode() if text else None


def generate_prefix(prompt: Any, max_chars: int, system: Any = None) -> bytes | None:
    """``/api/generate`` and ``/v1/completions``: system + the prompt's start."""
    if max_chars <= 0:
        return None
    text = "\x1e".join(p for p in (_text(system), _text(prompt)) if p)[:max_chars]
    return text.encode() if text else None


def prefix_hash(prefix: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(prefix, digest_size=8).digest(), "big")
