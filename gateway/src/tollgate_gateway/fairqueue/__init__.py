"""A pool's capacity shared fairly between keys: start-time fair queuing, pure core.

``FairQueue`` holds no clock, task or lock: it is a state machine of slots and waiting
tickets, so every scheduling decision can be replayed in a unit test. ``AsyncFairQueue``
puts futures and deadlines around it for the gateway.
"""

from tollgate_gateway.fairqueue.core import (
    PRIORITY_WEIGHTS,
    FairQueue,
    QueueFull,
    Ticket,
    parse_priority,
    weight_for,
)
from tollgate_gateway.fairqueue.waiting import AsyncFairQueue, WaitTimeout

__all__ = [
    "PRIORITY_WEIGHTS",
    "AsyncFairQueue",
    "FairQueue",
    "QueueFull",
    "Ticket",
    "WaitTimeout",
    "parse_priority",
    "weight_for",
]
