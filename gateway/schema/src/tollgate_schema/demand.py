"""The demand contract between the gateways (writers) and the operator (reader): what a pool's
autoscaler sees of the requests for it. Pure: the Redis calls stay with each side.

Each gateway process keeps one field of the hash ``tg:demand:{<namespace>/<pool>}``: its
instance id -> ``{"inflight": n, "queued": n, "at": unix seconds}``, written about once a
second while it has requests for the pool, and at once when a request starts to wait for a
pool with no ready replica; it then also publishes the pool on the channel ``tg:demand``.
A pool's demand is the sum over the fields written within the last ``fresh`` seconds, so a
gateway that died stops counting; the hash itself expires ``TTL`` seconds after its last
write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

CHANNEL = "tg:demand"
TTL = 60


def demand_key(pool: str) -> str:
    """``tg:demand:{team/small}``: the braces keep a pool's key in one Redis Cluster slot."""
    return f"{CHANNEL}:{{{pool}}}"


def demand_entry(inflight: int, queued: int, at: float) -> bytes:
    """One gateway's field: its requests in flight and waiting for the pool, and when."""
    return json.dumps(
        {"inflight": inflight, "queued": queued, "at": at}, separators=(",", ":")
    ).encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def sum_fresh(entries: Mapping[Any, Any], now: float, fresh: float) -> int:
    """In flight + queued over the entries written in the last ``fresh`` seconds; entries
    that are not the contract's JSON are skipped."""
    total = 0
    for raw in entries.values():
        try:
            entry = json.loads(_text(raw))
            if not isinstance(entry, dict) or now - float(entry["at"]) > fresh:
                continue
            total += max(0, int(entry.get("inflight", 0))) + max(0, int(entry.get("queued", 0)))
        except (ValueError, TypeError, KeyError):
            continue
    return total
