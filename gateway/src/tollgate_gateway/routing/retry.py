"""When a failed upstream attempt may go to another replica."""

from __future__ import annotations

from dataclasses import dataclass

# Failures that happen before Ollama produced anything: safe to send elsewhere.
RETRYABLE = frozenset({"connect", "reset_before_response", "busy_503"})


def retryable(kind: str, bytes_sent_to_client: int) -> bool:
    """Never after a byte reached the client; only failures the request did not cause."""
    return bytes_sent_to_client == 0 and kind in RETRYABLE


@dataclass(slots=True)
class RetryBudget:
    """At most ``attempts`` tries in all, and none started after ``deadline``."""

    attempts: int
    deadline: float
    used: int = 0

    def next(self, now: float) -> bool:
        if self.used >= self.attempts or (self.used and now >= self.deadline):
            return False
        self.used += 1
        return True
