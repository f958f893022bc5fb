"""Login protection: attempts rate limited per client address and per email in Redis
(shared by every replica), and password hashing on a small bounded executor of its own.

argon2 is slow and takes 64 MiB on purpose; without bounds a flood of wrong passwords
queues hashes in the default executor while each request holds a database connection, and
the proxy's key lookups wait behind them. Here a login holds no connection while it hashes,
at most `workers` hashes run at once and at most `queue` more wait; beyond that, and beyond
the rate limits, logins are answered 429 with Retry-After at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tollgate_gateway.admin.security import verify_password
from tollgate_gateway.errors import ApiError

log = logging.getLogger(__name__)

# KEYS: address counter, email counter. ARGV: window (s), address limit, email limit.
# Every attempt counts against its address; the email's count (failures, see FAILED) is
# only read. Returns {0, 0} when allowed, else {1 (address) | 2 (email), seconds to wait}.
CHECK = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
if n > tonumber(ARGV[2]) then
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
  return {1, ttl}
end
local failed = tonumber(redis.call('GET', KEYS[2]) or '0')
if failed >= tonumber(ARGV[3]) then
  return {2, math.max(redis.call('TTL', KEYS[2]), 1)}
end
return {0, 0}
"""
FAILED = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def too_many(message: str, retry_after: int) -> ApiError:
    return ApiError(
        429,
        message,
        type="rate_limit_error",
        code="too_many_logins",
        headers={"retry-after": str(max(1, retry_after))},
    )


class LoginGuard:
    def __init__(
        self,
        redis: Redis,
        window_seconds: int,
        per_address: int,
        per_email: int,
        workers: int,
        queue: int,
    ) -> None:
        self._redis = redis
        self._window = window_seconds
        self._per_address = per_address
        self._per_email = per_email
        self._check = redis.register_script(CHECK)
        self._failed = redis.register_script(FAILED)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._slots = asyncio.Semaphore(workers + queue)
        self._redis_down = False

    @staticmethod
    def _keys(address: str, email: str) -> list[str]:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return [f"tollgate:login:addr:{address}", f"tollgate:login:email:{digest}"]

    async def admit(self, address: str, email: str) -> None:
        """Count this attempt; 429 when the address or the email is over its limit."""
        try:
            verdict, wait = await self._check(
                keys=self._keys(address, email),
                args=[self._window, self._per_address, self._per_email],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            # Logins go on without the shared limits (hashing stays bounded below).
            self._down(exc)
            return
        self._up()
        if verdict == 1:
            raise too_many("Too many login attempts from this address; retry later.", int(wait))
        if verdict == 2:
            raise too_many("Too many failed logins for this account; retry later.", int(wait))

    async def failed(self, address: str, email: str) -> None:
        try:
            await self._failed(keys=self._keys(address, email)[1:], args=[self._window])
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(exc)

    async def verify(self, password_hash: str, password: str) -> bool:
        """argon2 on the login executor; 429 at once when it is already full."""
        if self._slots.locked():
            raise too_many("Too many logins in progress; retry in a moment.", 1)
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, verify_password, password_hash, password
            )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _down(self, exc: BaseException) -> None:
        if not self._redis_down:
            self._redis_down = True
            log.warning("login rate limits off while redis is unavailable: %s", exc)

    def _up(self) -> None:
        if self._redis_down:
            self._redis_down = False
            log.info("login rate limits enforced again")
