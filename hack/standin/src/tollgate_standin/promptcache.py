"""Ollama's prompt (KV) cache, as far as time to first token can tell.

The runner keeps one cache slot per parallel sequence. With its default settings
(``OLLAMA_MULTIUSER_CACHE`` unset: ``findLongestCacheSlot`` in ``runner/*/cache.go``) a new
prompt takes, among the slots **no other request is using**, the one whose cached tokens
share the longest prefix with it (the first such slot in slot order; an empty slot shares
nothing), keeps that prefix and evaluates only the rest. Each token the sequence then
generates is appended to the slot, so a conversation's next turn (its earlier turns and the
answer, sent back) finds the previous answer cached too. Unloading the model drops every
slot. Tokens here are the stand-in's words (see ``prompt_words``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .textgen import Turn


def prompt_words(turns: Sequence[Turn]) -> tuple[str, ...]:
    """The prompt's tokens: its words, each turn's first word tagged with the turn's role."""
    words: list[str] = []
    for role, content in turns:
        split = content.split() or [""]
        words.append(f"{role}:{split[0]}")
        words.extend(split[1:])
    return tuple(words)


def answer_words(text: str) -> tuple[str, ...]:
    """The tokens a generation appends to its slot: its answer as the next turn renders it."""
    return prompt_words((("assistant", text),))


def _common(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(slots=True, eq=False)
class CacheSlot:
    """One sequence's cache: the tokens it holds, and whether a request is using it."""

    words: tuple[str, ...] = ()
    in_use: bool = False

    def release(self, words: tuple[str, ...]) -> None:
        """The request is over: the slot keeps `words` (its prompt, and what it generated)."""
        self.words = words
        self.in_use = False


class PromptCache:
    """Per model: ``slots`` cache slots (one per parallel slot of the scheduler)."""

    def __init__(self, slots: int) -> None:
        self._slots = max(slots, 1)
        self._cached: dict[str, list[CacheSlot]] = {}

    def acquire(self, model: str, words: tuple[str, ...]) -> tuple[CacheSlot | None, int]:
        """The slot a prompt takes (marked in use until released) and how many of its
        leading words it held; (None, 0) when every slot is in use (the scheduler admits no
        more requests per model than there are slots, so only a misuse gets there)."""
        slots = self._cached.get(model)
        if slots is None:
            slots = self._cached[model] = [CacheSlot() for _ in range(self._slots)]
        best: CacheSlot | None = None
        best_len = -1
        for slot in slots:
            if slot.in_use:
                continue
            length = _common(slot.words, words)
            if length > best_len:
                best, best_len = slot, length
        if best is None:
            return None, 0
        best.in_use = True  # what it holds is replaced when it is released
        return best, best_len

    def drop(self, model: str) -> None:
        """The runner went (unloaded): its slots go too; a request still holding one
        releases it into the old, forgotten list."""
        self._cached.pop(model, None)

    def clear(self) -> None:
        self._cached.clear()
