"""Fault injection for tests (``/_standin/faults``); nothing like this exists in Ollama.

Kinds:

* ``fail``: answer the next request(s) with ``status`` and ``body`` (default: the path's
  usual error shape carrying ``message``) without running the handler;
* ``delay``: wait ``delay_ms`` before handling the request (no bytes are sent meanwhile);
* ``drop``: abort the TCP connection after ``after_chunks`` chunks of a generation or pull
  (``0``: before any response);
* ``stream_error``: after ``after_chunks`` chunks end the stream with Ollama's mid-stream
  error (``{"error": message}`` line; on ``/v1`` the empty chunk Ollama sends, and no
  ``[DONE]``); with ``0`` chunks, or on a non-streamed request, a 500 error response.

``fail`` and ``delay`` apply to every non-``/_standin`` path; ``drop`` and
``stream_error`` are taken by the chat, generate, completion and pull handlers.
Each fault applies ``times`` times (``-1``: until cleared) to requests whose path starts
with ``path`` (empty: any path).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

Kind = Literal["fail", "delay", "drop", "stream_error"]
KINDS: tuple[Kind, ...] = ("fail", "delay", "drop", "stream_error")
IMMEDIATE: tuple[Kind, ...] = ("delay", "fail")
STREAMING: tuple[Kind, ...] = ("drop", "stream_error")


@dataclass(slots=True)
class Fault:
    kind: Kind
    times: int = 1
    path: str = ""
    status: int = 500
    message: str = "injected fault"
    body: Any = None
    after_chunks: int = 0
    delay_ms: float = 0.0

    def matches(self, path: str) -> bool:
        return self.times != 0 and path.startswith(self.path)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_fault(obj: Any) -> Fault:
    """Build a :class:`Fault` from JSON, raising ``ValueError`` with a readable reason."""
    if not isinstance(obj, dict):
        raise ValueError("a fault must be a JSON object")
    unknown = set(obj) - set(Fault.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown fault fields: {sorted(unknown)}")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}")
    fault = Fault(kind=cast(Kind, kind))
    for name, want in _FIELD_TYPES.items():
        if name in obj:
            setattr(fault, name, _typed(name, obj[name], want))
    fault.body = obj.get("body")
    _check_ranges(fault)
    return fault


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "times": int,
    "path": str,
    "status": int,
    "message": str,
    "after_chunks": int,
    "delay_ms": (int, float),
}


def _typed(name: str, value: Any, want: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, want):
        raise ValueError(f"{name} has the wrong type")
    return value


def _check_ranges(fault: Fault) -> None:
    if fault.times == 0 or fault.times < -1:
        raise ValueError("times must be >= 1, or -1 for 'until cleared'")
    if not 100 <= fault.status <= 599:
        raise ValueError("status must be an HTTP status code")
    if fault.after_chunks < 0 or fault.delay_ms < 0:
        raise ValueError("after_chunks and delay_ms must be >= 0")


class FaultBook:
    """Active faults, consumed in the order they were added."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def active(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self._faults]

    def take(self, path: str, kinds: tuple[Kind, ...]) -> list[Fault]:
        """Consume the first matching fault of each of ``kinds``."""
        if not self._faults:
            return []
        taken: list[Fault] = []
        for kind in kinds:
            fault = next((f for f in self._faults if f.kind == kind and f.matches(path)), None)
            if fault is not None:
                taken.append(self._consume(fault))
        return taken

    def _consume(self, fault: Fault) -> Fault:
        if fault.times > 0:
            fault.times -= 1
            if fault.times == 0:
                self._faults.remove(fault)
        return fault
