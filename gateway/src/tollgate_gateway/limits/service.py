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
import collections
import contextlib
import functools
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any, Protocol, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tollgate_gateway import metrics
from tollgate_gateway.config import RedisFailurePolicy
from tollgate_gateway.errors import ApiError
from tollgate_gateway.keys.service import KeyRecord
from tollgate_gateway.limits.breaker import Breaker
from tollgate_gateway.storage.cancellation import reraise_lost_cancel
from tollgate_gateway.usage.stream import STREAM as USAGE_STREAM

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


def nanos_per_token(price_per_mtok: Decimal) -> float:
    """A price per million tokens as nano-units per token (what the scripts count in)."""
    return float(price_per_mtok * 1000)


@dataclass(frozen=True, slots=True)
class Ask:
    """What an admission reserves: the prompt estimate plus the output it may produce
    (`output`, clamped by the script to what the key has left, but never below `least`),
    priced per token in nano-units for the budget."""

    prompt: int = 0
    output: int = 0
    least: int = 1
    input_nanos: float = 0.0
    output_nanos: float = 0.0


NOTHING = Ask(least=0)


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


# -- the hot-path Redis client ---------------------------------------------------------------
# Admission and settlement are one Lua script each, twice per request. redis-py's asyncio
# client spends more CPU per call than the rest of a request (pool checkout, locks, health
# checks, retries, a task per settlement). This client keeps one connection, writes the
# commands of one event-loop turn in a single write and matches replies in order (RESP
# replies are FIFO). Any failure, or a reply later than the timeout, closes the connection
# and fails every pending call; the next call reconnects. Errors are redis-py's exception
# types, so the failure policy sees exactly what it saw before.


def _pack(args: tuple[bytes | str | int | float, ...]) -> bytes:
    """One RESP command. Text is counted in characters and encoded once when it is all
    ASCII (the usual case: ids, numbers, key names); otherwise argument by argument."""
    if bytes not in map(type, args):
        texts = [a if type(a) is str else str(a) for a in args]
        body = "".join([f"${len(t)}\r\n{t}\r\n" for t in texts])
        if body.isascii():
            return f"*{len(texts)}\r\n{body}".encode()
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Pipe(asyncio.Protocol):
    """One connection; futures wait for replies in the order the commands were written.
    A single timer watches the oldest unanswered command."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._watch: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.close(RedisConnectionError(f"Protocol error from Redis: {exc}"))
                return
            if reply is False:
                return
            if not pending:
                self.close(RedisConnectionError("Redis sent a reply nobody asked for."))
                return
            future = pending.popleft()[0]
            if not future.done():  # a caller that gave up (cancelled) drops its reply
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError("Connection closed by server."))

    def send(self, command: bytes, urgent: bool = False) -> asyncio.Future[Any]:
        """Queue a command, written with the others of this event-loop turn in one write
        (`urgent`: written now, with whatever is queued)."""
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.closed:
            future.set_exception(RedisConnectionError("Connection closed."))
            return future
        if not self._outgoing and not urgent:
            self._loop.call_soon(self._flush)
        self._outgoing.append(command)
        if urgent:
            self._flush()
        deadline = self._loop.time() + self._timeout
        self._pending.append((future, deadline))
        if self._watch is None:
            self._watch = self._loop.call_at(deadline, self._check)
        return future

    def _flush(self) -> None:
        if self._outgoing and self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def _check(self) -> None:
        self._watch = None
        if not self._pending:
            return
        deadline = self._pending[0][1]
        if deadline <= self._loop.time():
            # The reply may still come, out of step with the next command: start afresh.
            self.close(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self._watch = self._loop.call_at(deadline, self._check)

    def close(self, exc: RedisError) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(exc)

    def _fail(self, exc: RedisError) -> None:
        self.closed = True
        self._outgoing.clear()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        while self._pending:
            future = self._pending.popleft()[0]
            if not future.done():
                future.set_exception(exc)


class ScriptClient:
    """EVALSHA (EVAL when the server lost the script) on one pipelined connection."""

    def __init__(self, redis: Redis, timeout: float | None) -> None:
        pool = redis.connection_pool
        kwargs = pool.connection_kwargs
        tcp = pool.connection_class is Connection
        self._unix: str | None = None if tcp else kwargs.get("path")
        self._host = kwargs.get("host", "localhost")
        self._port = int(kwargs.get("port", 6379))
        self._setup = []
        if kwargs.get("password"):
            user = kwargs.get("username")
            auth = ("AUTH", user, kwargs["password"]) if user else ("AUTH", kwargs["password"])
            self._setup.append(_pack(auth))
        if kwargs.get("db"):
            self._setup.append(_pack(("SELECT", kwargs["db"])))
        self._timeout: float = timeout or kwargs.get("socket_timeout") or 5.0
        self._connect_timeout: float = kwargs.get("socket_connect_timeout") or self._timeout
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Future[_Pipe] | None = None

    @staticmethod
    def supports(redis: Redis) -> bool:
        """Plain TCP or unix-socket connections; anything else (TLS …) stays with redis-py."""
        return redis.connection_pool.connection_class in (Connection, UnixDomainSocketConnection)

    async def _connect(self) -> _Pipe:
        """The new connection, opened by a task of its own that every caller shares: a
        caller cancelled meanwhile leaves the others waiting for a real outcome."""
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._open_pipe())
            connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(connecting)

    def _connect_done(self, connecting: asyncio.Future[_Pipe]) -> None:
        self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # marked as seen: every waiter may have gone

    async def _open_pipe(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        try:
            pipe = await asyncio.wait_for(self._open(loop), self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc!r}") from exc
        self._pipe = pipe
        return pipe

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Pipe:
        def factory() -> _Pipe:
            return _Pipe(loop, self._timeout)

        if self._unix is not None:
            _, pipe = await loop.create_unix_connection(factory, self._unix)
        else:
            _, pipe = await loop.create_connection(factory, self._host, self._port)
        for command in self._setup:
            reply = await pipe.send(command)
            if isinstance(reply, ResponseError):
                pipe.close(RedisConnectionError(f"Redis refused the connection setup: {reply}"))
                raise RedisConnectionError(str(reply))
        return pipe

    @staticmethod
    def _command(script: Script, keys: list[str], args: list[Any], load: bool) -> bytes:
        if load:  # EVAL also caches the script on the server
            return _pack(("EVAL", script.source, len(keys), *keys, *args))
        return _pack(("EVALSHA", script.sha, len(keys), *keys, *args))

    def send(
        self,
        script: Script,
        keys: list[str],
        args: list[Any],
        load: bool = False,
        urgent: bool = False,
    ) -> asyncio.Future[Any]:
        """Run the script without waiting: its raw reply (a `ResponseError` instance when
        the script failed) or a connection/timeout error, as a future."""
        pipe = self._pipe
        if pipe is None or pipe.closed:
            return asyncio.ensure_future(self._send_connecting(script, keys, args, load))
        return pipe.send(self._command(script, keys, args, load), urgent)

    async def _send_connecting(
        self, script: Script, keys: list[str], args: list[Any], load: bool
    ) -> Any:
        pipe = await self._connect()
        return await pipe.send(self._command(script, keys, args, load))

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """The script's reply; raises what redis-py would (ResponseError, ConnectionError,
        TimeoutError)."""
        pipe = self._pipe
        if pipe is None or pipe.closed:
            pipe = await self._connect()
        try:
            reply = await pipe.send(self._command(script, keys, args, False))
        except RedisConnectionError:
            # The connection broke under us (a server restart, an idle timeout): once more on
            # a new one, as redis-py would. The scripts are idempotent per request id.
            pipe = await self._connect()
            reply = await pipe.send(self._command(script, keys, args, False))
        if isinstance(reply, ResponseError):
            if str(reply).startswith("NOSCRIPT"):  # a new or flushed server
                reply = await pipe.send(self._command(script, keys, args, True))
            if isinstance(reply, ResponseError):
                raise reply
        return reply

    async def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close(RedisConnectionError("Client closed."))
            self._pipe = None


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str

    @classmethod
    def load(cls, name: str, package: str = "tollgate_gateway.limits") -> Script:
        return cls.of(resources.files(package).joinpath(name).read_text())

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())

    def then(self, second: Script, gated: bool) -> Script:
        """One script that runs this one and then `second`, each seeing only its own KEYS
        and ARGV (the call passes this one's keys then the second's, and ARGV: the number of
        this one's keys, the number of its args, its args, the second's args). `gated`: the
        second runs only when this one's reply begins with 0 (admitted). Returns {this
        one's reply, the second's reply (false when it did not run)}. One script call where
        there were two: a request's pool-queue acquire rides on its admission, its release
        on its settlement."""
        return Script.of(
            "local function first(KEYS, ARGV)\n"
            f"{self.source}\nend\n"
            "local function second(KEYS, ARGV)\n"
            f"{second.source}\nend\n"
            "local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
            "local k1, a1, k2, a2 = {}, {}, {}, {}\n"
            "for i = 1, #KEYS do\n"
            "  if i <= nk then k1[i] = KEYS[i] else k2[i - nk] = KEYS[i] end\n"
            "end\n"
            "for i = 3, #ARGV do\n"
            "  if i <= na + 2 then a1[i - 2] = ARGV[i] else a2[i - na - 2] = ARGV[i] end\n"
            "end\n"
            "local r = first(k1, a1)\n"
            + ("if tonumber(r[1]) ~= 0 then return {r, false} end\n" if gated else "")
            + "return {r, second(k2, a2)}\n"
        )


@dataclass(slots=True, eq=False)
class Rider:
    """Another script that may run in the same script call as an admission or a settlement
    (the pool queue's acquire and release). The limiter either carries it, and resolves
    `reply` with its reply (None: it did not run, the admission was refused) or with the
    error of the call, or has it sent `alone` (the request's own call does not go to Redis
    through the pipe: no limits, the circuit breaker open, redis-py's client)."""

    script: Script
    keys: list[str]
    args: list[Any]
    alone: Callable[[], object]
    reply: asyncio.Future[Any] | None = None

    def resolve(self, value: Any) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(value)

    def fail(self, exc: BaseException) -> None:
        """The call failed or was given up (cancelled): whether the rider ran is unknown."""
        if self.reply is not None and not self.reply.done():
            if not isinstance(exc, Exception):
                exc = RedisConnectionError("The script call was given up.")
            self.reply.set_exception(exc)


@dataclass(slots=True)
class Admission:
    """An admitted request; settle() it exactly once when it ends. `member` is the
    limiter's own identity of the request (its Redis set member and `_inflight` key):
    generated here, never taken from the client, so repeating a request id sidesteps
    nothing. `request_id` is only for logs."""

    key: KeyRecord
    request_id: str
    tracked: bool
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    member: str = ""
    cap: int | None = None  # the output cap to send upstream; None: the client's own
    hold: Any = None  # the request's place in its pool's queue (pools/), set by the proxy


_LOAD, _RETRIED = 1, 2  # settlement attempts: sent as EVAL; sent again after a broken connection


@dataclass(slots=True)
class _Settlement:
    """One settlement on its way to Redis (retried once after a broken connection)."""

    request_id: str
    script: Script
    keys: list[str]
    args: list[Any]
    lost: Callable[[], None] | None
    urgent: bool
    started: float = field(default_factory=time.perf_counter)

    def give_up(self) -> None:
        """The row may not be in Redis: hand it to the fallback (duplicates, rarely, over
        losses: a timed-out script may still have run)."""
        lost, self.lost = self.lost, None
        if lost is not None:
            lost()


class Limiter:
    def __init__(
        self,
        redis: Redis,
        spend: SpendSource,
        policy: RedisFailurePolicy,
        lease_seconds: float,
        breaker: Breaker | None = None,
        usage_stream: str = USAGE_STREAM,
    ) -> None:
        self._redis = redis
        self._usage_stream = usage_stream
        self.breaker = breaker or Breaker()
        self._spend = spend
        self._policy = policy
        self._lease_ms = int(lease_seconds * 1000)
        self._admit_script = Script.load("admit.lua")
        self._settle_script = Script.load("settle.lua")
        self._usage_script = Script.load("usage.lua")
        self._renew = redis.register_script(Script.load("renew.lua").source)
        self._client: ScriptClient | None = None
        if ScriptClient.supports(redis):
            timeout = redis.connection_pool.connection_kwargs.get("socket_timeout")
            self._client = ScriptClient(redis, timeout)
        else:
            self._admit = redis.register_script(self._admit_script.source)
            self._settle = redis.register_script(self._settle_script.source)
            self._usage = redis.register_script(self._usage_script.source)
        self._inflight: dict[str, Admission] = {}
        # Members: a random per-process prefix and a counter, unique across replicas.
        self._member_prefix = os.urandom(6).hex() + ":"
        self._member_seq = itertools.count(1)
        self._settling: set[asyncio.Future[Any]] = set()
        self._names: dict[Any, tuple[str, list[str]]] = {}
        self._latency_children: dict[str, Any] = {}
        self._pairs: dict[tuple[str, str, bool], Script] = {}
        self._month = ""
        self._month_ends = 0.0
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
        if self._client is not None:
            await self._client.close()

    async def drain(self) -> None:
        """Wait for the settlements already sent (shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    @property
    def scripts(self) -> ScriptClient | None:
        """The pipelined script connection (None: redis-py's, e.g. over TLS): the pool queue
        writes its scripts there too, in the same write as the admissions of the turn."""
        return self._client

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # -- admission -------------------------------------------------------------------
    async def admit(
        self, key: KeyRecord, request_id: str, ask: Ask = NOTHING, rider: Rider | None = None
    ) -> Admission:
        """Admit one request under the key's limits (a 429 ApiError when refused). A `rider`
        (the pool queue's acquire) runs in the same script, after the limits admitted the
        request, when the admission goes through the pipe; otherwise it is sent alone."""
        if not key.has_limits:
            if rider is not None:
                rider.alone()
            return Admission(key, request_id, tracked=False)
        if not self.breaker.allow():
            if rider is not None:
                rider.alone()
            metrics.LIMITS_UNCHECKED.inc()
            return self._unchecked(key, request_id)
        if rider is not None and self._client is None:
            rider.alone()
            rider = None
        member = f"{self._member_prefix}{next(self._member_seq)}"
        started = time.perf_counter()
        try:
            result = await self._run_admit(key, member, ask, -1, rider)
            if result[0] == -1:
                now = datetime.now(UTC)
                seed = await self._spend.month_spend(key.id, month_start(now))
                result = await self._run_admit(key, member, ask, int(seed * NANOS), rider)
        except BaseException as exc:
            if rider is not None:
                rider.fail(exc)
            if not isinstance(exc, TimeoutError | RedisError | OSError):
                raise
            if not isinstance(exc, ResponseError):
                self._failed()
            return self._redis_down(key, request_id, exc)
        self._latency("admit").observe(time.perf_counter() - started)
        if self.breaker.success():
            log.warning("redis answers again: circuit breaker closed")
            metrics.REDIS_BREAKER_OPEN.set(0)
        if not self.redis_up:
            log.warning("redis is back; limits are enforced again")
            self.redis_up = True
            metrics.REDIS_UP.set(1)
        code = int(result[0])
        if code != 0:
            raise self._refusal(key, code, result)
        tracked = key.tracked
        admission = Admission(key, request_id, tracked, self._headers(key, result), member=member)
        if key.tpm_limit is not None or key.monthly_budget is not None:
            admission.cap = int(result[5])
        if tracked:
            self._inflight[member] = admission
        return admission

    async def _run_admit(
        self, key: KeyRecord, member: str, ask: Ask, seed: int, rider: Rider | None = None
    ) -> list[Any]:
        budget = -1 if key.monthly_budget is None else int(key.monthly_budget * NANOS)
        keys = self._keys(key)
        args: list[int | float | str] = [
            int(time.time() * 1000),
            key.rate_limit_rpm or 0,
            key.tpm_limit or 0,
            key.concurrency_limit or 0,
            self._lease_ms,
            member,
            budget,
            seed,
            MONTH_TTL,
            ask.prompt,
            ask.output,
            ask.least,
            ask.input_nanos,
            ask.output_nanos,
        ]
        if rider is not None and self._client is not None:
            script = self._composed(self._admit_script, rider.script, gated=True)
            both: list[Any] = await self._client.run(
                script, [*keys, *rider.keys], [len(keys), len(args), *args, *rider.args]
            )
            result: list[Any] = both[0]
            if result[0] != -1:  # (-1: run again with the month's spend, the rider too)
                rider.resolve(both[1] or None)
            return result
        if self._client is not None:
            result = await self._client.run(self._admit_script, keys, args)
        else:
            result = await self._admit(keys=keys, args=args)
        return result

    def _composed(self, first: Script, second: Script, gated: bool) -> Script:
        name = (first.sha, second.sha, gated)
        script = self._pairs.get(name)
        if script is None:
            script = self._pairs[name] = first.then(second, gated)
        return script

    def _month_tag(self) -> str:
        """``YYYYMM`` of now (UTC), recomputed only when a month ends."""
        if time.time() >= self._month_ends:
            now = datetime.now(UTC)
            self._month = f"{now:%Y%m}"
            start = month_start(now)
            following = (start + timedelta(days=32)).replace(day=1)
            self._month_ends = following.timestamp()
        return self._month

    def _keys(self, key: KeyRecord) -> list[str]:
        month = self._month_tag()
        cached = self._names.get(key.id)
        if cached is not None and cached[0] == month:
            return cached[1]
        base = f"tg:{{{key.id}}}"
        # The hashes are named for their shape (":3": sums beside the entries, both kinds of
        # reservation in one hash, the window's expiry pushed back once a minute), so gateways
        # of an earlier release, during a rolling upgrade, never read them.
        names = [
            f"{base}:rpm",
            f"{base}:tpm:3",
            f"{base}:inflight",
            f"{base}:resv:3",
            f"{base}:spend:{month}",
        ]
        if len(self._names) >= 100_000:
            self._names.clear()
        self._names[key.id] = (month, names)
        return names

    def _failed(self) -> None:
        """A Redis call failed: count it against the circuit breaker."""
        if self.breaker.failure():
            log.error(
                "redis keeps failing: circuit breaker open, limits are %s without waiting on "
                "redis until a probe succeeds",
                "not enforced" if self._policy is RedisFailurePolicy.OPEN else "refused (503)",
            )
            metrics.REDIS_BREAKER_OPEN.set(1)

    def _redis_down(self, key: KeyRecord, request_id: str, exc: BaseException) -> Admission:
        if self.redis_up:
            log.error("redis unavailable (%s); limits policy is %r", exc, self._policy.value)
        self.redis_up = False
        metrics.REDIS_UP.set(0)
        return self._unchecked(key, request_id)

    def _unchecked(self, key: KeyRecord, request_id: str) -> Admission:
        """What the failure policy does with a request Redis cannot check."""
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
                f"Rate limit reached for tokens: limit {key.tpm_limit} per minute, used or "
                f"reserved {int(result[2])}, this request needs {int(result[3])} for its prompt "
                f"and at least one more for its answer. "
                f"Please try again in {format_duration(retry_ms)}.",
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
    def settle(
        self,
        admission: Admission,
        tokens: int,
        cost: Decimal,
        usage: str | None = None,
        lost: Callable[[], None] | None = None,
        urgent: bool = True,
        rider: Rider | None = None,
    ) -> None:
        """Free the admission's lease and reservation, charge its tokens and cost, and append
        its `usage` row (a COPY line) to the usage stream, in one script. Not awaited: the
        request does not wait for it (`drain` does, at shutdown). A row is written to the
        socket at once unless `urgent` is False (then with the other commands of this
        event-loop turn: the caller yields before answering). `lost` is called when the row
        may not have reached Redis (it then goes elsewhere). A `rider` (the pool queue's
        release) runs in the same script when the settlement goes through the pipe;
        otherwise it is sent alone."""
        if admission.settled:
            if rider is not None:
                rider.alone()
            return
        admission.settled = True
        self._inflight.pop(admission.member, None)
        key = admission.key
        charge_tpm = key.tpm_limit is not None and tokens > 0
        charge_spend = key.monthly_budget is not None and cost > 0
        limits = admission.tracked or charge_tpm or charge_spend
        if (not limits and usage is None) or self._client is None or self.breaker.open:
            if rider is not None:
                rider.alone()
            rider = None
        if not limits and usage is None:
            return
        if self.breaker.open:  # its lease expires by itself; the spend is re-seeded later
            if lost is not None:
                lost()
            return
        if limits:
            names = self._keys(key)
            script = self._settle_script
            keys = [names[1], names[2], names[3], names[4], self._usage_stream]
            args: list[Any] = [
                int(time.time() * 1000),
                admission.member,
                tokens,
                int(cost * NANOS),
                MONTH_TTL,
                int(charge_tpm),
                int(charge_spend),
                usage or "",
            ]
        else:
            script, keys, args = self._usage_script, [self._usage_stream], [usage]
        if rider is not None:
            script = self._composed(script, rider.script, gated=False)
            args = [len(keys), len(args), *args, *rider.args]
            keys = [*keys, *rider.keys]
        job = _Settlement(
            admission.request_id, script, keys, args, lost, urgent and usage is not None
        )
        if self._client is None:
            task = asyncio.ensure_future(self._settle_redis_py(job))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
            return
        self._send_settle(job, 0)

    def _send_settle(self, job: _Settlement, attempt: int) -> None:
        assert self._client is not None
        load = attempt & _LOAD != 0
        # A usage row is written to the socket now, not with the others of this loop turn:
        # the response has been answered, and a SIGKILL from here on must not lose it.
        pending = self._client.send(job.script, job.keys, job.args, load, urgent=job.urgent)
        self._settling.add(pending)
        pending.add_done_callback(functools.partial(self._settled, job, attempt))

    def _settled(self, job: _Settlement, attempt: int, future: asyncio.Future[Any]) -> None:
        self._settling.discard(future)
        if future.cancelled():
            job.give_up()
            return
        exc = future.exception()
        if exc is None:
            reply = future.result()
            if not isinstance(reply, ResponseError):
                self._latency("settle").observe(time.perf_counter() - job.started)
                return
            if not attempt & _LOAD and str(reply).startswith("NOSCRIPT"):
                self._send_settle(job, attempt | _LOAD)
                return
            exc = reply
        elif isinstance(exc, RedisConnectionError) and not attempt & _RETRIED:
            # The connection broke under us: once more on a new one, as redis-py would.
            self._send_settle(job, attempt | _RETRIED)
            return
        job.give_up()
        if isinstance(exc, TimeoutError | RedisError | OSError):
            # The lease expires by itself; the month's spend is re-seeded from Postgres.
            if not isinstance(exc, ResponseError):
                self._failed()
            log.warning("could not settle %s in redis: %s", job.request_id, exc)
        else:
            log.error("settling %s failed: %r", job.request_id, exc)

    async def _settle_redis_py(self, job: _Settlement) -> None:
        try:
            script = self._settle if job.script is self._settle_script else self._usage
            await script(keys=job.keys, args=job.args)
            self._latency("settle").observe(time.perf_counter() - job.started)
        except (TimeoutError, RedisError, OSError) as exc:
            job.give_up()
            log.warning("could not settle %s in redis: %s", job.request_id, exc)

    def _latency(self, op: str) -> Any:
        child = self._latency_children.get(op)
        if child is None:
            child = self._latency_children[op] = metrics.REDIS_LATENCY.labels(op)
        return child

    async def _renew_loop(self) -> None:
        """Renew the leases of this process's in-flight requests (one script per key, which
        also extends the expiry of the key's lease set and reservations); keep
        `tollgate_redis_up` true."""
        interval = self._lease_ms / 3000
        while True:
            try:
                await self.renew()
                metrics.REDIS_UP.set(1)
            except (RedisError, OSError) as exc:
                metrics.REDIS_UP.set(0)
                if self._inflight:
                    log.warning("lease renewal failed: %s", exc)
            await asyncio.sleep(interval)

    async def renew(self) -> None:
        """One renewal round for every request this process holds."""
        now = int(time.time() * 1000)
        by_key: dict[Any, list[Admission]] = {}
        for adm in list(self._inflight.values()):
            by_key.setdefault(adm.key.id, []).append(adm)
        with reraise_lost_cancel():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.ping()
                for held in by_key.values():
                    names = self._keys(held[0].key)
                    await self._renew(
                        keys=[names[2], names[3]],
                        args=[now + self._lease_ms, self._lease_ms * 4, *(a.member for a in held)],
                        client=pipe,
                    )
                await pipe.execute()
