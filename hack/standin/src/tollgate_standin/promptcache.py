"""Ollama's prompt (KV) cache, as far as time to first token can tell.

The runner keeps one cache per parallel slot; a new prompt takes the slot whose cached
tokens share the longest prefix with it and evaluates only the rest. Unloading the model
drops every slot. Tokens here are the stand-in's words (see ``textgen.prompt_tokens``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .textgen import Turn


def prompt_words(turns: Sequence[Turn]) -> tuple[str, ...]:
    """The prompt's tokens: its words, each turn's first word tagged with the turn's role."""
    words: list[str] = []
    for role, content in turns:
        split = content.split() or [""]
        words.append(f"{role}:{split[0]}")
        words.extend(split[1:])
    return tuple(words)


def _common(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PromptCache:
    """Per model: ``slots`` cached prompts, the most recently used last."""

    def __init__(self, slots: int) -> None:
        self._slots = max(slots, 1)
        self._cached: dict[str, list[tuple[str, ...]]] = {}

    def use(self, model: str, words: tuple[str, ...]) -> int:
        """Store ``words`` in the best slot; returns how many leading words were cached."""
        slots = self._cached.setdefault(model, [])
        best, best_len = -1, 0
        for index, cached in enumerate(slots):
            length = _common(cached, words)
            if length > best_len:
                best, best_len = index, length
        if best >= 0:
            slots.pop(best)
        elif len(slots) >= self._slots:
            slots.pop(0)  # the least recently used slot
        slots.append(words)
        return best_len

    def drop(self, model: str) -> None:
        self._cached.pop(model, None)

    def clear(self) -> None:
        self._cached.clear()
