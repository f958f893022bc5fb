"""Errors the adapters (db, k8s, ollama, leader) raise and every layer above understands:
a reconcile could not finish (`ReconcileError`), because a dependency did not answer
(`Unavailable`). Services add their own outcomes (`services.errors`)."""

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
