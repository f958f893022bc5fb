"""Start-time fair queuing (Goyal et al., SFQ) over a fixed number of slots.

Each flow (a key, or an app) carries the finish tag of its last request. A request of
flow ``f`` with weight ``w`` arriving at virtual time ``V`` gets the start tag
``S = max(V, F_f)`` and finish tag ``F_f = S + cost / w``; free slots go to the waiting
request with the smallest start tag (ties: arrival order). ``V`` is the start tag of the
request most recently granted. So a flow that queued 100 requests and a flow that queues one
alternate: the newcomer starts at ``V`` and is served after at most one more request of the
busy flow, while an idle pool serves a lone flow at full speed (work-conserving).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

PRIORITY_WEIGHTS: dict[str, float] = {"interactive": 8.0, "standard": 4.0, "batch": 1.0}
"""``ApiKey.spec.priority`` names and their weights; an explicit number is taken as is."""


def weight_for(priority: str | float | None) -> float:
    if priority is None:
        return PRIORITY_WEIGHTS["standard"]
    if isinstance(priority, int | float):
        if priority <= 0:
            raise ValueError("a weight must be > 0")
        return float(priority)
    try:
        return PRIORITY_WEIGHTS[priority]
    except KeyError:
        raise ValueError(f"unknown priority {priority!r}") from None


def parse_priority(value: str | float | None) -> str | float | None:
    """A priority as stored (the key row's text, the CRD's string): a name of
    ``PRIORITY_WEIGHTS`` or a positive weight; anything else is ``None`` (standard)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    text = value.strip()
    if text in PRIORITY_WEIGHTS:
        return text
    try:
        weight = float(text)
    except ValueError:
        return None
    return weight if 0 < weight < float("inf") else None


class QueueFull(Exception):
    """The pool's waiting room is full: answer at once, do not wait."""


@dataclass(eq=False, slots=True)
class Ticket:
    flow: str
    weight: float
    cost: float
    start: float = 0.0
    seq: int = 0
    granted: bool = False
    done: bool = False
    cancelled: bool = False
    displaced: bool = False  # a newcomer earlier in the order took its place in a full room
    waited: bool = field(default=False)

    def __lt__(self, other: Ticket) -> bool:
        return (self.start, self.seq) < (other.start, other.seq)


class FairQueue:
    def __init__(self, capacity: int, max_waiting: int) -> None:
        if capacity < 0 or max_waiting < 0:
            raise ValueError("capacity and max_waiting must be >= 0")
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.in_flight = 0
        self.virtual_time = 0.0
        self._finish: dict[str, float] = {}
        self._heap: list[Ticket] = []
        self._waiting = 0
        self._seq = itertools.count()
        self._displaced: list[Ticket] = []

    @property
    def waiting(self) -> int:
        return self._waiting

    def waiting_by_flow(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self._heap:
            if not (t.cancelled or t.granted):
                counts[t.flow] = counts.get(t.flow, 0) + 1
        return counts

    def submit(self, flow: str, weight: float = 4.0, cost: float = 1.0) -> Ticket:
        """A ticket, granted at once when a slot is free and nobody waits; else queued.

        Raises :class:`QueueFull` when it would have to wait and the waiting room is full,
        unless it comes earlier in the order than the last ticket waiting: it then takes
        that one's place (so one flow cannot fill the room for the others), and the ticket
        it displaced is in :meth:`take_displaced` (its waiter gets the refusal instead).
        """
        if weight <= 0 or cost <= 0:
            raise ValueError("weight and cost must be > 0")
        ticket = Ticket(flow, weight, cost, seq=next(self._seq))
        ticket.start = max(self.virtual_time, self._finish.get(flow, 0.0))
        if self.in_flight < self.capacity and not self._waiting:
            self._tag(ticket)
            self._grant(ticket)
            return ticket
        if self._waiting >= self.max_waiting:
            last = max((t for t in self._heap if not t.cancelled), default=None)
            if last is None or last.start <= ticket.start:
                raise QueueFull(f"{self._waiting} requests already waiting")
            last.cancelled = last.displaced = True  # its turn stays counted against its flow
            self._waiting -= 1
            self._displaced.append(last)
        self._tag(ticket)
        ticket.waited = True
        heapq.heappush(self._heap, ticket)
        self._waiting += 1
        return ticket

    def take_displaced(self) -> list[Ticket]:
        """Tickets displaced from the full room since the last call (never granted)."""
        displaced, self._displaced = self._displaced, []
        return displaced

    def release(self, ticket: Ticket) -> list[Ticket]:
        """The granted request finished: its slot goes to the next tickets (returned)."""
        if not ticket.granted or ticket.done:
            raise ValueError("release of a ticket that holds no slot")
        ticket.done = True
        self.in_flight -= 1
        return self._dispatch()

    def cancel(self, ticket: Ticket) -> list[Ticket]:
        """A waiting request left (disconnect, deadline): it never takes a slot.

        A granted ticket is released instead. Returns tickets granted as a consequence.
        """
        if ticket.granted:
            return [] if ticket.done else self.release(ticket)
        if not ticket.cancelled:
            ticket.cancelled = True
            self._waiting -= 1
        return self._dispatch()

    def resize(self, capacity: int) -> list[Ticket]:
        """Replicas came or went; more room grants waiting tickets at once."""
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        return self._dispatch()

    def forget_idle_flows(self) -> None:
        """Drop finish tags at or below the virtual time (they no longer change a start)."""
        self._finish = {f: tag for f, tag in self._finish.items() if tag > self.virtual_time}

    def _tag(self, ticket: Ticket) -> None:
        self._finish[ticket.flow] = ticket.start + ticket.cost / ticket.weight

    def _grant(self, ticket: Ticket) -> None:
        ticket.granted = True
        self.in_flight += 1
        self.virtual_time = max(self.virtual_time, ticket.start)

    def _dispatch(self) -> list[Ticket]:
        granted: list[Ticket] = []
        while self.in_flight < self.capacity and self._heap:
            ticket = heapq.heappop(self._heap)
            if ticket.cancelled:
                continue
            self._waiting -= 1
            self._grant(ticket)
            granted.append(ticket)
        return granted
