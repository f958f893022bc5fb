"""What can go wrong in a reconcile, in terms the handlers translate for kopf."""

from __future__ import annotations


class ReconcileError(Exception):
    """A reconcile could not finish; `reason` is a CamelCase word for conditions and Events."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Unavailable(ReconcileError):
    """A dependency (Postgres, Ollama, the API server) did not answer: retry later."""

    def __init__(self, what: str, detail: str, delay: float = 10.0) -> None:
        super().__init__(f"{what.capitalize()}Unavailable", f"{what} is unavailable: {detail}")
        self.delay = delay


class Waiting(ReconcileError):
    """Something the spec refers to is not there yet; it may appear (retry slowly)."""

    def __init__(self, reason: str, message: str, delay: float = 30.0) -> None:
        super().__init__(reason, message)
        self.delay = delay


class InvalidSpec(ReconcileError):
    """The spec can never work as written; only a change to it (or its inputs) helps."""
