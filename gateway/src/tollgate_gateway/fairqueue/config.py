"""A pool's queue settings as the catalog stores them in ``models.routing``.

``slots`` (parallel requests per replica: the OllamaPool's ``numParallel``) turns the queue
on; without it requests go straight to the model server, as before. ``cold_start_seconds``
(a pool that scales from zero) holds requests while the pool has no ready replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MAX_WAIT_SECONDS = 30.0
DEFAULT_MAX_QUEUE = 1000


@dataclass(frozen=True, slots=True)
class QueueConfig:
    slots: int  # parallel requests per ready replica
    max_wait_seconds: float | None = None  # None: the gateway's default
    max_queue: int | None = None  # waiting requests per pool and model; None: the default
    cold_start_seconds: float | None = None  # hold while no replica is ready (autoscaling)

    def capacity(self, replicas: int) -> int:
        return self.slots * max(replicas, 0)


def _positive(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def queue_config(data: Mapping[str, object] | None) -> QueueConfig | None:
    """The queue of an alias's pool, or None when the pool has no ``slots`` (no queue).
    Values of the wrong type or out of range are ignored (the default applies)."""
    if not data:
        return None
    slots = _positive(data.get("slots"))
    cold = _positive(data.get("cold_start_seconds"))
    if slots is None:
        if cold is None:
            return None
        slots = 1.0  # a pool held at zero that has not told its slots: Ollama's default
    most = _positive(data.get("max_queue"))
    return QueueConfig(
        slots=int(slots),
        max_wait_seconds=_positive(data.get("max_wait_seconds")),
        max_queue=None if most is None else int(most),
        cold_start_seconds=cold,
    )
