"""A circuit breaker for Redis: stop waiting on a Redis that does not answer.

After `threshold` failures in a row (timeouts, refused or broken connections) the breaker
opens for a backoff window: admissions skip Redis altogether, so the open policy serves at
once and the closed policy answers 503 at once, instead of each request waiting for the
timeout. When the window has passed one request probes Redis: success closes the breaker,
failure opens it again for twice as long (up to `max_backoff`). Pure logic; the clock is
injected for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    __slots__ = (
        "_backoff",
        "_base",
        "_clock",
        "_failures",
        "_max",
        "_probe_until",
        "_threshold",
        "_until",
        "open",
    )

    def __init__(
        self,
        threshold: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._base = self._backoff = backoff
        self._max = max_backoff
        self._clock = clock
        self._failures = 0
        self._until = 0.0  # open until then
        self._probe_until = 0.0  # a probe is out until then
        self.open = False

    def allow(self) -> bool:
        """May this call go to Redis? Always while closed; once open, one probe per window."""
        if not self.open:
            return True
        now = self._clock()
        if now < self._until or now < self._probe_until:
            return False
        self._probe_until = now + self._backoff  # a probe that never reports expires too
        return True

    def success(self) -> bool:
        """Redis answered; True when that closes an open breaker."""
        self._failures = 0
        if not self.open:
            return False
        self.open = False
        self._backoff = self._base
        self._probe_until = 0.0
        return True

    def failure(self) -> bool:
        """Redis failed; True when that opens the breaker (not when a probe fails again)."""
        self._failures += 1
        now = self._clock()
        if self.open:
            if self._probe_until:  # the probe failed (not a call from before the opening)
                self._backoff = min(self._backoff * 2, self._max)
                self._until = now + self._backoff
                self._probe_until = 0.0
            return False
        if self._failures < self._threshold:
            return False
        self.open = True
        self._until = now + self._backoff
        return True
