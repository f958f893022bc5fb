"""Microbenchmark: what durable usage and the disconnect watcher add to a request's CPU.

In process, against a real Valkey on loopback (started here): the gateway's own Limiter
settles N admissions of a fully limited key (a) as before, without a usage row; (b) with
the usage row appended in the same script and written to the socket at once (what the
gateway does); (c) the same, batched with the loop turn's other commands. Also (d) the
usage-only script of a key without limits, (e) building the row's COPY line, and (f) the
per-request disconnect watcher. CPU time per operation, median of five rounds.

    .venv/bin/python bench/micro_settle.py [N]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from tollgate_dev.servers.backing import LocalValkey
from tollgate_gateway.config import RedisFailurePolicy
from tollgate_gateway.keys.service import KeyRecord
from tollgate_gateway.limits.service import Ask, Limiter
from tollgate_gateway.middleware import _Disconnect
from tollgate_gateway.usage.writer import UsageRow, copy_line


class NoSpend:
    async def month_spend(self, key_id: Any, month_start: datetime) -> Decimal:
        return Decimal(0)


def key(limited: bool) -> KeyRecord:
    return KeyRecord(
        id=uuid.uuid4(),
        key_hash="x",
        name="bench",
        owner=None,
        app=None,
        allowed=None,
        rate_limit_rpm=10**9 if limited else None,
        tpm_limit=10**9 if limited else None,
        concurrency_limit=10**5 if limited else None,
        monthly_budget=Decimal(10**6) if limited else None,
        expires_at=None,
        disabled=False,
        revoked=False,
    )


ROW = UsageRow(
    ts=datetime.now(UTC),
    request_id="req_" + "0" * 32,
    key_id=uuid.uuid4(),
    app="bench",
    alias="gpt-4",
    backend_tag="llama3:8b",
    endpoint="chat.completions",
    status=200,
    prompt_tokens=12,
    completion_tokens=32,
    cost=Decimal("0.0000123"),
    latency_ms=0.8123,
    ttft_ms=None,
    streamed=False,
    error_class=None,
)


async def settle_round(limiter: Limiter, k: KeyRecord, n: int, mode: str) -> float:
    ask = Ask(40, 32, 1, 1500.0, 2000.0)
    admissions = [await limiter.admit(k, "r", ask) for _ in range(n)]
    line = copy_line(ROW)
    client: Any = limiter._client
    original = client.send
    if mode == "batched":

        def batched(*args: Any, **kwargs: Any) -> Any:
            kwargs["urgent"] = False
            return original(*args, **kwargs)

        client.send = batched
    started = time.process_time()
    for i, adm in enumerate(admissions):
        if mode == "none":
            limiter.settle(adm, 44, Decimal("0.0000123"))
        else:
            limiter.settle(adm, 44, Decimal("0.0000123"), line, None)
        if i % 32 == 31:
            await asyncio.sleep(0)  # let the loop write, as it would between requests
    await limiter.drain()
    elapsed = time.process_time() - started
    client.send = original
    return elapsed / n * 1e6


async def watcher_round(n: int) -> float:
    """The watcher's cost over a bare loop turn (what the request's own work stands for)."""
    started = time.process_time()
    for _ in range(n):
        await asyncio.sleep(0)
    bare = time.process_time() - started
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    started = time.process_time()
    for _ in range(n):
        watch = _Disconnect(receive)
        await asyncio.sleep(0)  # the request's work: the watcher starts waiting
        watch.stop()
    await asyncio.sleep(0)
    return (time.process_time() - started - bare) / n * 1e6


async def main(n: int) -> None:
    valkey = LocalValkey(Path(tempfile.mkdtemp(prefix="micro-settle-")) / "valkey")
    valkey.start()
    redis = Redis.from_url(valkey.url, socket_timeout=2)
    limiter = Limiter(redis, NoSpend(), RedisFailurePolicy.OPEN, 15)
    try:
        results: dict[str, list[float]] = {}
        limited, unlimited = key(True), key(False)
        for _ in range(5):
            for mode in ("none", "urgent", "batched"):
                us = await settle_round(limiter, limited, n, mode)
                results.setdefault(f"settle, limited key, {mode}", []).append(us)
            us = await settle_round(limiter, unlimited, n, "urgent")
            results.setdefault("usage row only, key without limits", []).append(us)
            started = time.process_time()
            for _ in range(n):
                copy_line(ROW)
            results.setdefault("copy_line(row)", []).append(
                (time.process_time() - started) / n * 1e6
            )
            results.setdefault("disconnect watcher (answered < 50 ms)", []).append(
                await watcher_round(n)
            )
        for name, values in results.items():
            print(f"{name:45s} {statistics.median(values):7.2f} µs CPU per request")
    finally:
        await limiter.stop()
        await redis.aclose()
        valkey.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
