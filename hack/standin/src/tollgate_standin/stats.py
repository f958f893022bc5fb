"""Counters the stand-in exposes at ``GET /_standin/stats`` (not part of Ollama)."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any


class Stats:
    """Request counts, in-flight generations, cancellations and a short request log."""

    def __init__(self, log_size: int) -> None:
        self.requests: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_by_model: Counter[str] = Counter()
        self.queued = 0
        self.max_queued = 0
        self.cancelled = 0
        self.busy_rejections = 0
        self.faults_applied = 0
        self.loads = 0
        self.load_seconds = 0.0
        self.evictions = 0
        self.prompt_cache_hits = 0
        self.prompt_cached_tokens = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=log_size)

    def reset(self) -> None:
        """Zero everything except what is in flight right now (those requests still end)."""
        self.requests.clear()
        self.responses.clear()
        self.max_in_flight = self.in_flight
        self.max_queued = self.queued
        self.cancelled = 0
        self.busy_rejections = 0
        self.faults_applied = 0
        self.loads = 0
        self.load_seconds = 0.0
        self.evictions = 0
        self.prompt_cache_hits = 0
        self.prompt_cached_tokens = 0
        self.recent.clear()

    def enter(self, model: str) -> None:
        self.in_flight += 1
        self.in_flight_by_model[model] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self, model: str) -> None:
        self.in_flight -= 1
        self.in_flight_by_model[model] -= 1
        if self.in_flight_by_model[model] <= 0:
            del self.in_flight_by_model[model]

    def enqueue(self) -> None:
        self.queued += 1
        self.max_queued = max(self.max_queued, self.queued)

    def dequeue(self) -> None:
        self.queued -= 1

    def record(
        self,
        method: str,
        path: str,
        status: int,
        headers: dict[str, str],
        body: Any,
        arrived: float | None = None,
    ) -> None:
        """One answered request: ``time`` is when its answer ended, ``arrived`` when it came."""
        self.responses[str(status)] += 1
        if self.recent.maxlen:
            now = time.time()
            self.recent.append(
                {
                    "time": now,
                    "arrived": now if arrived is None else arrived,
                    "method": method,
                    "path": path,
                    "status": status,
                    "headers": headers,
                    "body": body,
                }
            )

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "responses": dict(self.responses),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "in_flight_by_model": dict(self.in_flight_by_model),
            "queued": self.queued,
            "max_queued": self.max_queued,
            "cancelled": self.cancelled,
            "busy_rejections": self.busy_rejections,
            "faults_applied": self.faults_applied,
            "loads": self.loads,
            "load_seconds": round(self.load_seconds, 6),
            "evictions": self.evictions,
            "prompt_cache_hits": self.prompt_cache_hits,
            "prompt_cached_tokens": self.prompt_cached_tokens,
        }
