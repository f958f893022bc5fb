"""Outlier ejection: a replica that fails repeatedly rests for a backoff, then is probed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _State:
    failures: int = 0
    ejections: int = 0
    until: float = 0.0
    probing: bool = False


class Ejector:
    """Consecutive-failure ejection with exponential backoff and a single half-open probe.

    After ``threshold`` consecutive failures a replica is ejected for ``base`` seconds,
    doubling with each further ejection up to ``cap``. When its time is up it is offered to
    exactly one request (the probe); success restores it, failure ejects it again at once.
    """

    def __init__(self, threshold: int = 3, base: float = 1.0, cap: float = 30.0) -> None:
        if threshold < 1 or base <= 0 or cap < base:
            raise ValueError("threshold >= 1, base > 0 and cap >= base are required")
        self.threshold = threshold
        self.base = base
        self.cap = cap
        self._states: dict[str, _State] = {}

    def available(self, name: str, now: float) -> bool:
        """May a request go to ``name``? Claims the probe when the backoff has passed."""
        state = self._states.get(name)
        if state is None or state.ejections == 0 or state.failures < self.threshold:
            return True
        if now < state.until or state.probing:
            return False
        state.probing = True
        return True

    def ejected(self, now: float) -> set[str]:
        """Names that may not take traffic now (without claiming a probe)."""
        return {
            name
            for name, s in self._states.items()
            if s.ejections and s.failures >= self.threshold and (now < s.until or s.probing)
        }

    def due(self, name: str, now: float) -> bool:
        """Ejected and its backoff over: a successful probe may restore it."""
        state = self._states.get(name)
        return (
            state is not None
            and state.ejections > 0
            and state.failures >= self.threshold
            and now >= state.until
        )

    def success(self, name: str) -> None:
        state = self._states.get(name)
        if state is not None:
            state.failures = 0
            state.ejections = 0
            state.probing = False

    def failure(self, name: str, now: float, hard: bool = False) -> bool:
        """Record a failure; True when it ejects the replica (a metric and a log line).

        ``hard``: a failure that leaves no doubt (the connection was refused: nothing
        listens) ejects at once instead of counting towards the threshold."""
        state = self._states.setdefault(name, _State())
        if hard and not state.probing and state.failures >= self.threshold:
            return False  # already ejected
        state.failures = max(state.failures + 1, self.threshold if hard else 0)
        if state.probing or state.failures == self.threshold:
            state.probing = False
            state.failures = max(state.failures, self.threshold)
            state.until = now + min(self.base * 2**state.ejections, self.cap)
            state.ejections += 1
            return True
        return False

    def forget(self, keep: set[str]) -> None:
        """Drop state of replicas that left the pool."""
        for name in list(self._states):
            if name not in keep:
                del self._states[name]
