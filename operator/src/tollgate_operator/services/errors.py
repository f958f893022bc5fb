"""What can go wrong in a reconcile, in terms the handlers translate for kopf.

`ReconcileError` and `Unavailable` (a dependency did not answer) are the adapters' own
errors (`tollgate_operator.errors`); the outcomes only services decide are here.
"""

from __future__ import annotations

from tollgate_operator.errors import ReconcileError as ReconcileError
from tollgate_operator.errors import Unavailable as Unavailable


class Waiting(ReconcileError):
    """Something the spec refers to is not there yet; it may appear (retry slowly)."""

    def __init__(self, reason: str, message: str, delay: float = 30.0) -> None:
        super().__init__(reason, message)
        self.delay = delay


class InvalidSpec(ReconcileError):
    """The spec can never work as written; only a change to it (or its inputs) helps."""
