"""The pool queue: at most a pool's capacity in flight per pool and model, across every
gateway process, and the rest waiting here in one fair order (``pool.lua``).

A request of an alias whose pool has ``slots`` takes a :class:`Hold`: when the key has
limits, the acquire runs inside the key's admission script (a :class:`Rider`: one script
call, and only once the limits admitted the request), and the release inside its
settlement's; otherwise each is written to Redis on its own at once. Granted: the request
goes on. Otherwise it waits for a grant, which the releasing gateway publishes on this process's
channel; a poll every ``poll_seconds`` renews the leases of what this process holds, hands
out room that appeared (more replicas), and catches a grant whose message was lost.

A pool with no ready replica and ``cold_start_seconds`` (it scales from zero) holds its
requests the same way (capacity 0) and publishes its demand at once for the operator
(``tg:demand:{<pool>}``: the contract is ``tollgate_schema.demand``, shared with the operator).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from tollgate_gateway import metrics
from tollgate_gateway.catalog.service import Alias
from tollgate_gateway.errors import ApiError
from tollgate_gateway.fairqueue.config import DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_SECONDS
from tollgate_gateway.fairqueue.core import weight_for
from tollgate_gateway.keys.service import KeyRecord
from tollgate_gateway.limits.service import Rider, Script, ScriptClient
from tollgate_gateway.routing.model import normalize_model
from tollgate_gateway.storage.cancellation import reraise_lost_cancel
from tollgate_schema.demand import CHANNEL as DEMAND_CHANNEL
from tollgate_schema.demand import TTL as DEMAND_TTL
from tollgate_schema.demand import demand_entry, demand_key

log = logging.getLogger(__name__)

GRANTS = "tg:pool:grant:"  # + the process's instance id: grants of its waiting requests

WAITING, RUNNING, DONE, UNGATED = "waiting", "running", "done", "ungated"


def pool_busy(alias: str, retry_after: float, why: str) -> ApiError:
    seconds = max(1, math.ceil(retry_after))
    return ApiError(
        503,
        f"The pool serving `{alias}` is busy ({why}); please retry in {seconds} s.",
        type="server_error",
        code="pool_busy",
        headers={"retry-after": str(seconds), "retry-after-ms": str(seconds * 1000)},
    )


def _never_acquired(reply: Awaitable[Any] | None) -> bool:
    """The acquire rode on an admission that refused: it never ran (its reply is None)."""
    return (
        isinstance(reply, asyncio.Future)
        and reply.done()
        and not reply.cancelled()
        and reply.exception() is None
        and reply.result() is None
    )


@dataclass(slots=True, eq=False)
class Hold:
    """One request's place in a pool queue: waiting, then holding a slot until released."""

    queue: Queue
    member: str
    flow: str
    weight: float
    alias: str
    key: str
    reply: Awaitable[Any] | None
    state: str = WAITING
    started: float = field(default_factory=time.monotonic)
    queued_ms: float = 0.0
    waited: bool = False  # it had to wait (its alias may have changed meanwhile)
    cold: bool = False  # it waits for a pool with no ready replica
    limit: float = 0.0  # seconds it may wait
    deadline: float = 0.0  # monotonic
    future: asyncio.Future[None] | None = None  # set when it is granted
    refusal: ApiError | None = None  # the 503 it got (asked again: the same)
    rider: Rider | None = None  # its acquire, to ride on the key's admission script

    @property
    def pool(self) -> str:
        return self.queue.pool


@dataclass(slots=True, eq=False)
class Queue:
    """What this process knows of one pool and model's queue."""

    name: str  # "<pool>|<model>": the hash tag of its Redis keys
    pool: str
    alias: str  # the alias last seen using it (to read its capacity again)
    capacity: int
    max_queue: int
    keys: list[str]
    waiters: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    running: int = 0  # in flight across every gateway, as last seen
    waiting: int = 0  # waiting across every gateway, as last seen
    service: float = 0.5  # seconds a slot is held (moving average): Retry-After estimates

    def local(self) -> tuple[int, int]:
        running = sum(1 for h in self.holds.values() if h.state == RUNNING)
        return running, len(self.holds) - running

    def retry_after(self) -> float:
        return self.service * (self.waiting + 1) / max(self.capacity, 1)


@dataclass(frozen=True, slots=True)
class _Series:
    wait: Any
    waiting: Any
    in_flight: Any


class PoolQueue:
    def __init__(
        self,
        redis: Redis,
        client: ScriptClient | None,
        aliases: Callable[[str], Awaitable[Alias | None]],
        *,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        max_waiting: int = DEFAULT_MAX_QUEUE,
        fairness: str = "key",
        lease_seconds: float = 15.0,
        poll_seconds: float = 1.0,
        per_key: bool = False,
    ) -> None:
        self._redis = redis
        self._client = client
        self._aliases = aliases
        self.max_wait_seconds = max_wait_seconds
        self.max_waiting = max_waiting
        self._by_app = fairness == "app"
        self._lease_ms = int(lease_seconds * 1000)
        self.poll_seconds = poll_seconds
        self._per_key = per_key
        self.instance = secrets.token_hex(8)
        self._channel = GRANTS + self.instance
        self._seq = itertools.count(1)
        self._script = Script.load("pool.lua", "tollgate_gateway.pools")
        self._redis_py = redis.register_script(self._script.source)
        self.queues: dict[str, Queue] = {}
        self._demand_sent: dict[str, tuple[int, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Future[Any]] = set()
        self._unqueued = False  # Redis could not be reached (logged once)
        self._metric_series: dict[str, _Series] = {}

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen(), name="pool-grants"),
            loop.create_task(self._tick_loop(), name="pool-poll"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a Redis that does not answer must not hold the shutdown
            await asyncio.wait(self._tasks, timeout=2)
        if self._sending:
            await asyncio.wait(self._sending, timeout=2)

    # -- per request -------------------------------------------------------------------
    def begin(self, alias: Alias, key: KeyRecord, carried: bool = False) -> Hold | None:
        """A hold in the alias's pool queue, its acquire script already on its way (None: the
        alias's pool has no queue). Await it with :meth:`wait`; always :meth:`release` it.
        `carried`: the acquire is the hold's `rider`, for the limiter to run in the key's
        admission script (or to send alone)."""
        config = alias.queue
        if config is None:
            return None
        replicas = 1 if alias.replicas is None else len(alias.replicas)
        capacity = config.capacity(replicas)
        if capacity == 0 and config.cold_start_seconds is None:
            return None  # no replica and no cold start: answered as before (no_replica)
        name = f"{alias.pool}|{normalize_model(alias.backend_tag)}"
        queue = self.queues.get(name)
        if queue is None:
            base = f"tg:pool:{{{name}}}"
            queue = self.queues[name] = Queue(
                name,
                alias.pool,
                alias.alias,
                capacity,
                self.max_waiting,
                [f"{base}:run", f"{base}:wait", f"{base}:wlease", f"{base}:tags"],
            )
        queue.alias, queue.capacity = alias.alias, capacity
        queue.max_queue = config.max_queue if config.max_queue is not None else self.max_waiting
        flow = (key.app or key.id_text) if self._by_app else key.id_text
        weight = weight_for(key.priority)
        member = f"{self.instance}:{next(self._seq)}"
        args = ["acquire", *self._common(queue), member, flow, weight, 1, queue.max_queue]
        hold = Hold(queue, member, flow, weight, alias.alias, key.id_text, None)
        if carried and self._client is not None:
            alone = functools.partial(self._alone, hold, args)
            rider = Rider(self._script, queue.keys, args, alone)
            rider.reply = hold.reply = asyncio.get_running_loop().create_future()
            hold.rider = rider
        else:
            hold.reply = self._send(queue, args)
        queue.holds[member] = hold
        return hold

    def _alone(self, hold: Hold, args: list[Any]) -> None:
        """The acquire did not ride on an admission: on its own, now."""
        hold.reply = self._send(hold.queue, args)

    async def wait(self, hold: Hold, alias: Alias, patience: float | None = None) -> bool:
        """Until the hold has a slot (True). Raises 503 ``pool_busy`` when the queue is full
        or the deadline passed; a cancelled wait (the client left) gives its place up at
        once. With ``patience``: False once that many seconds passed still waiting (the place
        is kept; call again to wait on)."""
        if hold.state in (RUNNING, UNGATED):
            if hold.member in hold.queue.waiters:  # granted between two patient waits
                self._stopped_waiting(hold)
                self._observe(hold)
            return True
        if hold.refusal is not None:
            raise hold.refusal
        if hold.reply is not None and not await self._first(hold, alias):
            return True
        if hold.refusal is not None:  # displaced before the acquire's reply was read
            self._stopped_waiting(hold)
            raise hold.refusal
        future = hold.future
        assert future is not None
        remaining = hold.deadline - time.monotonic()
        try:
            if hold.state != RUNNING:  # a grant may have come before the acquire's reply
                timeout = remaining if patience is None else min(patience, remaining)
                await asyncio.wait_for(asyncio.shield(future), max(timeout, 0.0))
        except TimeoutError:
            if hold.state != RUNNING:
                # (a timer may fire a clock tick early: the deadline has passed then)
                if patience is not None and time.monotonic() < hold.deadline - 0.005:
                    return False
                if not await self._cancel(hold):
                    self._stopped_waiting(hold)
                    raise self._refuse(hold, alias) from None
        except BaseException:
            self._stopped_waiting(hold)
            raise
        self._stopped_waiting(hold)
        hold.state = RUNNING
        self._observe(hold)
        return True

    async def _first(self, hold: Hold, alias: Alias) -> bool:
        """The acquire's reply: False when the hold needs no waiting (granted or ungated);
        raises when the queue is full; True when it waits (its deadline set)."""
        queue = hold.queue
        config = alias.queue
        assert config is not None
        assert hold.reply is not None
        try:
            reply = await hold.reply
        except (RedisError, OSError, TimeoutError) as exc:
            # Redis away: the request goes on ungated (the model server's own queue decides).
            if not self._unqueued:
                log.warning("pool queues unavailable, requests go on unqueued: %s", exc)
            self._unqueued = True
            metrics.POOL_REJECTIONS.labels(queue.pool, "unchecked").inc()
            self._drop(hold, UNGATED)
            return False
        finally:
            hold.reply = None
        if self._unqueued:
            log.warning("pool queues available again")
            self._unqueued = False
        code = int(reply[0])
        queue.running, queue.waiting = int(reply[1]), int(reply[2])
        self._gauges(queue)
        if code == 1 or hold.state == RUNNING:
            hold.state = RUNNING
            self._observe(hold)
            return False
        if code == 2:
            raise self._full(hold, f"{queue.waiting} requests waiting")
        hold.waited = True
        hold.cold = queue.capacity == 0
        if hold.cold and config.cold_start_seconds is not None:
            hold.limit = config.cold_start_seconds
        else:
            hold.limit = config.max_wait_seconds or self.max_wait_seconds
        hold.deadline = hold.started + hold.limit
        hold.future = asyncio.get_running_loop().create_future()
        queue.waiters[hold.member] = hold.future
        if self._per_key:
            metrics.KEY_POOL_WAITING.labels(queue.pool, hold.key).inc()
        if hold.cold:
            await self._publish_demand(queue.pool, wake=True)
        return True

    def _stopped_waiting(self, hold: Hold) -> None:
        queue = hold.queue
        if queue.waiters.pop(hold.member, None) is not None and self._per_key:
            metrics.KEY_POOL_WAITING.labels(queue.pool, hold.key).dec()

    def _refuse(self, hold: Hold, alias: Alias) -> ApiError:
        queue = hold.queue
        cold = queue.capacity == 0 and hold.cold
        reason = "cold_start" if cold else "deadline"
        self._rejected(hold, reason)
        self._observe(hold)
        config = alias.queue
        retry = config.cold_start_seconds if cold and config is not None else None
        why = "no replica is ready yet" if cold else f"no slot within {hold.limit:g} s"
        hold.refusal = pool_busy(alias.alias, retry or queue.retry_after(), why)
        return hold.refusal

    def release(self, hold: Hold, carried: bool = False) -> Rider | None:
        """The request is over (or never went on): its slot or its place goes to the next.
        `carried`: the release script is returned as a rider, for the limiter to run in the
        settlement's script (or to send alone), rather than sent."""
        if hold.state == DONE:
            hold.queue.holds.pop(hold.member, None)
            return None
        if _never_acquired(hold.reply):  # it rode on an admission that refused
            hold.state = DONE
            hold.queue.holds.pop(hold.member, None)
            hold.reply = None
            return None
        if hold.state == UNGATED:  # its acquire may have reached Redis after all
            hold.state = DONE
            return self._fire(
                hold.queue, ["release", *self._common(hold.queue), hold.member], carried
            )
        queue = hold.queue
        if hold.state == RUNNING:
            held = time.monotonic() - hold.started - hold.queued_ms / 1000
            queue.service += (max(held, 0.0) - queue.service) * 0.1
        hold.state = DONE
        queue.holds.pop(hold.member, None)
        self._stopped_waiting(hold)
        if hold.reply is not None:  # never awaited (admission refused): after its reply
            reply = hold.reply
            hold.reply = None
            task = asyncio.ensure_future(self._release_after(queue, hold.member, reply))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
            return None
        return self._fire(queue, ["release", *self._common(queue), hold.member], carried)

    async def _release_after(self, queue: Queue, member: str, reply: Awaitable[Any]) -> None:
        try:
            if await reply is None:
                return  # it rode on an admission that refused: never acquired
        except Exception as exc:  # unknown whether it reached Redis: released to be sure
            log.debug("releasing after a failed acquire: %s", exc)
        self._fire(queue, ["release", *self._common(queue), member])

    # -- Redis -------------------------------------------------------------------------
    def _common(self, queue: Queue) -> list[Any]:
        return [int(time.time() * 1000), self._lease_ms, queue.capacity, GRANTS]

    def _send(self, queue: Queue, args: list[Any]) -> Awaitable[Any]:
        """The script's reply, its command written with this event-loop turn's others."""
        if self._client is None:
            return asyncio.ensure_future(self._redis_py(keys=queue.keys, args=args))
        first = self._client.send(self._script, queue.keys, args)
        return asyncio.ensure_future(self._run(queue, args, first))

    async def _run(self, queue: Queue, args: list[Any], first: asyncio.Future[Any]) -> Any:
        assert self._client is not None
        try:
            reply = await first
        except RedisConnectionError:
            return await self._client.run(self._script, queue.keys, args)
        if isinstance(reply, ResponseError):
            if str(reply).startswith("NOSCRIPT"):
                return await self._client.run(self._script, queue.keys, args)
            raise reply
        return reply

    def _fire(self, queue: Queue, args: list[Any], carried: bool = False) -> Rider | None:
        """Send a script whose reply nobody waits for (`carried`: return it as a rider)."""
        if carried and self._client is not None:
            return Rider(self._script, queue.keys, args, functools.partial(self._fire, queue, args))
        task = asyncio.ensure_future(self._quiet(self._send(queue, args)))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        return None

    @staticmethod
    async def _quiet(reply: Awaitable[Any]) -> None:
        try:
            await reply
        except (RedisError, OSError, TimeoutError) as exc:  # its lease expires by itself
            log.debug("could not release a pool slot: %s", exc)

    async def _cancel(self, hold: Hold) -> bool:
        """Give a waiting place up; True when a grant came first (the slot is kept)."""
        queue = hold.queue
        try:
            reply = await self._send(queue, ["cancel", *self._common(queue), hold.member])
        except (RedisError, OSError, TimeoutError):
            hold.state = DONE  # its place expires with its lease
            queue.holds.pop(hold.member, None)
            return False
        if int(reply[0]) == 1:
            return True
        hold.state = DONE
        queue.holds.pop(hold.member, None)
        return False

    def _drop(self, hold: Hold, state: str) -> None:
        hold.state = state
        hold.queue.holds.pop(hold.member, None)

    def _full(self, hold: Hold, why: str) -> ApiError:
        """The hold is refused as a full queue refuses: out of the queue, counted, its 503."""
        self._drop(hold, DONE)
        self._rejected(hold, "full")
        hold.refusal = pool_busy(hold.alias, hold.queue.retry_after(), why)
        return hold.refusal

    def _message(self, member: str) -> None:
        """A message on this process's channel: a grant, or ("-" and the member) a waiter a
        newcomer displaced from a full queue."""
        if member.startswith("-"):
            self._displaced(member[1:], "a request earlier in the fair order took its place")
        else:
            self._grant(member)

    def _displaced(self, member: str, why: str) -> None:
        """A waiter lost its place (to a request of a flow further behind in a full queue,
        `pool.lua`; or its lease lapsed): refused now, as a full queue refuses."""
        for queue in self.queues.values():
            hold = queue.holds.get(member)
            if hold is None:
                continue
            if hold.state != WAITING:
                return
            refusal = self._full(hold, why)
            future = queue.waiters.get(member)
            if future is not None and not future.done():
                future.set_exception(refusal)
            return

    def _grant(self, member: str) -> None:
        for queue in self.queues.values():
            hold = queue.holds.get(member)
            if hold is None:
                continue
            if hold.state == WAITING:
                hold.state = RUNNING
            future = queue.waiters.get(member)
            if future is not None and not future.done():
                future.set_result(None)
            return

    async def _listen(self) -> None:
        """Grants published for this process's waiting requests."""
        backoff = 0.5
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                backoff = 0.5
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self._message(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: polls still find the grants
                log.debug("pool grant channel: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1)  # type: ignore[no-untyped-call]

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.tick()
            except Exception:
                log.exception("pool queue poll failed")

    async def tick(self) -> None:
        """Renew this process's leases, hand out room that appeared, wake lost grants;
        publish each pool's demand."""
        for queue in list(self.queues.values()):
            if queue.holds:
                await self._poll(queue)
        pools: dict[str, tuple[int, int]] = {}
        for queue in self.queues.values():
            running, waiting = queue.local()
            had = pools.get(queue.pool, (0, 0))
            pools[queue.pool] = (had[0] + running, had[1] + waiting)
        for pool, counts in pools.items():
            if counts != (0, 0) or self._demand_sent.get(pool, (0, 0)) != (0, 0):
                await self._write_demand(pool, counts)
        for name in [n for n, q in self.queues.items() if not q.holds]:
            if self._demand_sent.get(self.queues[name].pool, (0, 0)) == (0, 0):
                del self.queues[name]
        for pool in [p for p in self._demand_sent if p not in pools]:
            del self._demand_sent[pool]

    async def _poll(self, queue: Queue) -> None:
        alias = None
        with contextlib.suppress(Exception):
            alias = await self._aliases(queue.alias)
        if alias is not None and alias.queue is not None:
            replicas = 1 if alias.replicas is None else len(alias.replicas)
            queue.capacity = alias.queue.capacity(replicas)
        members = list(queue.holds)
        # Waiters Redis had placed before this poll: one it no longer knows lost its place
        # (displaced, and the message lost; or its lease lapsed).
        placed = {
            m
            for m, h in queue.holds.items()
            if h.state == WAITING and h.reply is None and h.future is not None
        }
        try:
            reply = await self._send(queue, ["poll", *self._common(queue), *members])
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("pool poll: %s", exc)
            return
        queue.running, queue.waiting = int(reply[0]), int(reply[1])
        self._gauges(queue)
        for member, state in zip(members, reply[2], strict=False):
            if int(state) == 1:
                self._grant(member)
            elif int(state) == -1 and member in placed:
                self._displaced(member, "its place in the queue was lost")

    async def _publish_demand(self, pool: str, wake: bool) -> None:
        counts = (0, 0)
        for queue in self.queues.values():
            if queue.pool == pool:
                running, waiting = queue.local()
                counts = (counts[0] + running, counts[1] + waiting)
        await self._write_demand(pool, counts, wake)

    async def _write_demand(self, pool: str, counts: tuple[int, int], wake: bool = False) -> None:
        key = demand_key(pool)
        value = demand_entry(counts[0], counts[1], time.time())
        try:
            # (a client that left meanwhile still leaves the queue; a stopped poll, stops)
            with reraise_lost_cancel():
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.hset(key, self.instance, value)
                    pipe.expire(key, DEMAND_TTL)
                    if wake:
                        pipe.publish(DEMAND_CHANNEL, pool)
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("could not publish demand of %s: %s", pool, exc)
            return
        self._demand_sent[pool] = counts

    # -- visibility --------------------------------------------------------------------
    def _rejected(self, hold: Hold, reason: str) -> None:
        metrics.POOL_REJECTIONS.labels(hold.queue.pool, reason).inc()
        if self._per_key:
            metrics.KEY_POOL_REJECTIONS.labels(hold.queue.pool, hold.key, reason).inc()

    def _observe(self, hold: Hold) -> None:
        hold.queued_ms = (time.monotonic() - hold.started) * 1000
        self._series(hold.queue).wait.observe(hold.queued_ms / 1000)
        if hold.cold:
            metrics.POOL_COLD_START_WAIT.labels(hold.queue.pool).observe(hold.queued_ms / 1000)

    def _gauges(self, queue: Queue) -> None:
        series = self._series(queue)
        series.waiting.set(queue.waiting)
        series.in_flight.set(queue.running)

    def _series(self, queue: Queue) -> _Series:
        """The queue's metric series, looked up once (a labels() call is not free)."""
        series = self._metric_series.get(queue.name)
        if series is None:
            model = queue.name.partition("|")[2]
            series = self._metric_series[queue.name] = _Series(
                metrics.POOL_WAIT.labels(queue.pool),
                metrics.POOL_WAITING.labels(queue.pool, model),
                metrics.POOL_IN_FLIGHT.labels(queue.pool, model),
            )
        return series

    async def refresh(self) -> None:
        """Read every known queue's counts now (the admin API)."""
        for queue in list(self.queues.values()):
            await self._poll(queue)

    def snapshot(self) -> list[dict[str, Any]]:
        """Each queue this process knows: capacity, in flight and waiting (all gateways, as
        last seen) and this process's waiting requests by flow."""
        out = []
        for queue in sorted(self.queues.values(), key=lambda q: q.name):
            by_flow: dict[str, int] = {}
            for hold in queue.holds.values():
                if hold.state == WAITING:
                    by_flow[hold.flow] = by_flow.get(hold.flow, 0) + 1
            out.append(
                {
                    "pool": queue.pool,
                    "model": queue.name.partition("|")[2],
                    "capacity": queue.capacity,
                    "in_flight": queue.running,
                    "waiting": queue.waiting,
                    "max_queue": queue.max_queue,
                    "waiting_here_by_flow": by_flow,
                }
            )
        return out
