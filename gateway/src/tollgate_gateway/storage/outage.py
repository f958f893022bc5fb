"""Whether Postgres answers, as the hot path sees it.

Key lookups and catalog reloads report here. While Postgres is down, what is already known
(keys, aliases) is served from memory for `grace` seconds after the first failure; one
attempt per `probe_interval` goes to the database (the others do not wait on it), and
each transition is logged once, not each failed request.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from tollgate_gateway import metrics

log = logging.getLogger(__name__)

# What a database that is down, restarting or unreachable raises through SQLAlchemy/psycopg.
UNAVAILABLE = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    DBAPIError,
    OSError,
    TimeoutError,
)


class DatabaseHealth:
    def __init__(self, grace: float, probe_interval: float = 1.0) -> None:
        self.grace = grace
        self.probe_interval = probe_interval
        self.down_since: float | None = None
        self._next_probe = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def within_grace(self) -> bool:
        return self.down_since is None or time.monotonic() - self.down_since < self.grace

    def may_try(self) -> bool:
        """Whether a request should try the database now (always, unless it is down)."""
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + self.probe_interval
        return True

    def failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self._next_probe = self.down_since + self.probe_interval
            metrics.DB_UP.set(0)
            log.warning(
                "postgres unavailable (%s: %s); serving known keys and aliases from memory "
                "for up to %.0f s",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                self.grace,
            )

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("postgres is back after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None
            metrics.DB_UP.set(1)
