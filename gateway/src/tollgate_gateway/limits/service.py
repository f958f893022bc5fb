"""Per-key limits shared by every replica, enforced atomically in Redis.

- requests per minute: an exact sliding window (a log of arrivals), never a fixed window;
- tokens per minute: real prompt + completion tokens, checked at admission, charged at
  completion, in one-second buckets over the last 60 seconds;
- concurrency: leases that expire unless their holder renews them, so a crashed replica
  leaks nothing;
- monthly budget: the request's largest possible cost is reserved at admission and settled
  to the real cost at completion; the month's spend is seeded from Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tollgate_gateway import metrics
from tollgate_gateway.config import RedisFailurePolicy
from tollgate_gateway.errors import ApiError
from tollgate_gateway.keys.service import KeyRecord

log = logging.getLogger(__name__)
NANOS = Decimal(1_000_000_000)
MONTH_TTL = 40 * 86400


class SpendSource(Protocol):
    async def month_spend(self, key_id: Any, month_start: datetime) -> Decimal: ...


def format_duration(ms: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``12ms``."""
    ms = max(0.0, ms)
    if ms < 1000:
        return f"{int(ms)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(slots=True)
class Admission:
    """An admitted request; settle() it exactly once when it ends."""

    key: KeyRecord
    request_id: str
    tracked: bool
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class Limiter:
    def __init__(
        self,
        redis: Redis,
        spend: SpendSource,
        policy: RedisFailurePolicy,
        lease_seconds: float,
    ) -> None:
        self._redis = redis
        self._spend = spend
        self._policy = policy
        self._lease_ms = int(lease_seconds * 1000)
        pkg = resources.files("tollgate_gateway.limits")
        self._admit = redis.register_script(pkg.joinpath("admit.lua").read_text())
        self._settle = redis.register_script(pkg.joinpath("settle.lua").read_text())
        self._inflight: dict[str, Admission] = {}
        self._renewer: asyncio.Task[None] | None = None
        self.redis_up = True

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_loop(), name="lease-renewer")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # -- admission -------------------------------------------------------------------
    async def admit(self, key: KeyRecord, request_id: str, reservation: Decimal) -> Admission:
        if not key.has_limits:
            return Admission(key, request_id, tracked=False)
        started = time.perf_counter()
        try:
            result = await self._run_admit(key, request_id, reservation, seed=-1)
            if result[0] == -1:
                now = datetime.now(UTC)
                seed = await self._spend.month_spend(key.id, month_start(now))
                result = await self._run_admit(key, request_id, reservation, int(seed * NANOS))
        except (TimeoutError, RedisError, OSError) as exc:
            return self._redis_down(key, request_id, exc)
        metrics.REDIS_LATENCY.labels("admit").observe(time.perf_counter() - started)
        if not self.redis_up:
            log.warning("redis is back; limits are enforced again")
            self.redis_up = True
            metrics.REDIS_UP.set(1)
        code = int(result[0])
        if code != 0:
            raise self._refusal(key, code, result)
        tracked = key.concurrency_limit is not None or key.monthly_budget is not None
        admission = Admission(key, request_id, tracked, self._headers(key, result))
        if tracked:
            self._inflight[request_id] = admission
        return admission

    async def _run_admit(
        self, key: KeyRecord, request_id: str, reservation: Decimal, seed: int
    ) -> list[Any]:
        now = datetime.now(UTC)
        budget = -1 if key.monthly_budget is None else int(key.monthly_budget * NANOS)
        result: list[Any] = await self._admit(
            keys=self._keys(key, now),
            args=[
                int(time.time() * 1000),
                key.rate_limit_rpm or 0,
                key.tpm_limit or 0,
                key.concurrency_limit or 0,
                self._lease_ms,
                request_id,
                budget,
                int(reservation * NANOS),
                seed,
                MONTH_TTL,
            ],
        )
        return result

    def _keys(self, key: KeyRecord, now: datetime) -> list[str]:
        base = f"tg:{{{key.id}}}"
        return [
            f"{base}:rpm",
            f"{base}:tpm",
            f"{base}:inflight",
            f"{base}:resv",
            f"{base}:spend:{now:%Y%m}",
        ]

    def _redis_down(self, key: KeyRecord, request_id: str, exc: BaseException) -> Admission:
        if self.redis_up:
            log.error("redis unavailable (%s); limits policy is %r", exc, self._policy.value)
        self.redis_up = False
        metrics.REDIS_UP.set(0)
        if self._policy is RedisFailurePolicy.CLOSED:
            raise ApiError(
                503,
                "Rate limits cannot be checked right now; please retry shortly.",
                type="server_error",
                code="limits_unavailable",
                headers={"retry-after": "1"},
            )
        return Admission(key, request_id, tracked=False)

    def _headers(self, key: KeyRecord, result: list[Any]) -> dict[str, str]:
        headers: dict[str, str] = {}
        if key.rate_limit_rpm:
            headers["x-ratelimit-limit-requests"] = str(key.rate_limit_rpm)
            headers["x-ratelimit-remaining-requests"] = str(
                max(0, key.rate_limit_rpm - int(result[1]))
            )
            headers["x-ratelimit-reset-requests"] = format_duration(float(result[2]))
        if key.tpm_limit:
            headers["x-ratelimit-limit-tokens"] = str(key.tpm_limit)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, key.tpm_limit - int(result[3])))
            headers["x-ratelimit-reset-tokens"] = format_duration(float(result[4]))
        return headers

    def _refusal(self, key: KeyRecord, code: int, result: list[Any]) -> ApiError:
        retry_ms = max(1, int(result[1]))
        retry = {"retry-after": str(max(1, -(-retry_ms // 1000))), "retry-after-ms": str(retry_ms)}
        if code == 1:
            return ApiError(
                429,
                f"Rate limit reached for requests: limit {key.rate_limit_rpm} per minute. "
                f"Please try again in {format_duration(retry_ms)}.",
                type="requests",
                code="rate_limit_exceeded",
                headers={
                    **retry,
                    "x-ratelimit-limit-requests": str(key.rate_limit_rpm),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": format_duration(retry_ms),
                },
            )
        if code == 2:
            return ApiError(
                429,
                f"Rate limit reached for tokens: limit {key.tpm_limit} per minute, used "
                f"{int(result[2])}. Please try again in {format_duration(retry_ms)}.",
                type="tokens",
                code="rate_limit_exceeded",
                headers={
                    **retry,
                    "x-ratelimit-limit-tokens": str(key.tpm_limit),
                    "x-ratelimit-remaining-tokens": "0",
                    "x-ratelimit-reset-tokens": format_duration(retry_ms),
                },
            )
        if code == 3:
            return ApiError(
                429,
                f"Too many concurrent requests: this key allows {key.concurrency_limit} at once. "
                "Retry when one of them has finished.",
                type="requests",
                code="concurrency_limit_exceeded",
                headers=retry,
            )
        return ApiError(
            429,
            f"You exceeded this key's monthly budget of {key.monthly_budget}. "
            "It resets at the start of the next calendar month (UTC).",
            type="insufficient_quota",
            code="insufficient_quota",
            headers={"x-should-retry": "false"},
        )

    # -- completion ------------------------------------------------------------------
    async def settle(self, admission: Admission, tokens: int, cost: Decimal) -> None:
        if admission.settled:
            return
        admission.settled = True
        self._inflight.pop(admission.request_id, None)
        key = admission.key
        charge_tpm = key.tpm_limit is not None and tokens > 0
        charge_spend = key.monthly_budget is not None and cost > 0
        if not (admission.tracked or charge_tpm or charge_spend):
            return
        keys = self._keys(key, datetime.now(UTC))
        started = time.perf_counter()
        try:
            await self._settle(
                keys=[keys[1], keys[2], keys[3], keys[4]],
                args=[
                    int(time.time() * 1000),
                    admission.request_id,
                    tokens,
                    int(cost * NANOS),
                    MONTH_TTL,
                    int(charge_tpm),
                    int(charge_spend),
                ],
            )
            metrics.REDIS_LATENCY.labels("settle").observe(time.perf_counter() - started)
        except (TimeoutError, RedisError, OSError) as exc:
            # The lease expires by itself; the month's spend is re-seeded from Postgres.
            log.warning("could not settle %s in redis: %s", admission.request_id, exc)

    async def _renew_loop(self) -> None:
        """Renew the leases of this process's in-flight requests; keep `tollgate_redis_up` true."""
        interval = self._lease_ms / 3000
        while True:
            expiry = int(time.time() * 1000) + self._lease_ms
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.ping()
                    for adm in list(self._inflight.values()):
                        base = f"tg:{{{adm.key.id}}}"
                        pipe.zadd(f"{base}:inflight", {adm.request_id: expiry}, xx=True)
                    await pipe.execute()
                metrics.REDIS_UP.set(1)
            except (RedisError, OSError) as exc:
                metrics.REDIS_UP.set(0)
                if self._inflight:
                    log.warning("lease renewal failed: %s", exc)
            await asyncio.sleep(interval)
