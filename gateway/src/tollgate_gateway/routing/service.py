"""The router: what this gateway knows of each replica, the policy applied per request, and
the attempts that go to another replica when one fails before answering.

State per replica (keyed by URL): the models it holds in memory and until when (its
``/api/ps``, polled every ``poll_seconds``, and corrected at once by each request routed
there), the models on its disk (``/api/tags``: a model whose pull has not finished gets no
traffic), requests in flight per model, and its failures (`Ejector`). The decisions
themselves are the pure `choose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson

from tollgate_gateway import metrics
from tollgate_gateway.errors import ApiError, upstream_error, upstream_failure
from tollgate_gateway.routing.health import Ejector
from tollgate_gateway.routing.model import Policy, Reason, Replica, Target, normalize_model
from tollgate_gateway.routing.policy import choose
from tollgate_gateway.routing.retry import RetryBudget, retryable
from tollgate_gateway.storage.cancellation import reraise_lost_cancel
from tollgate_gateway.storage.upstream import Upstream, UpstreamError, UpstreamResponse, read_body

log = logging.getLogger(__name__)

KEEP_ALIVE = 300.0  # Ollama's default keep-alive: how long a model stays after a request
LOAD_SECONDS = 0.1  # a response's load_duration above this was a model load
_FRACTION = re.compile(r"(\.\d{6})\d+")


class Routed(Protocol):
    """What the router needs of an alias (the catalog's `Alias`)."""

    @property
    def alias(self) -> str: ...
    @property
    def backend_tag(self) -> str: ...
    @property
    def replicas(self) -> tuple[Target, ...] | None: ...
    @property
    def pool(self) -> str: ...
    @property
    def routing(self) -> Any: ...


class ReplicaState:
    __slots__ = (
        "by_model",
        "elsewhere",
        "in_flight",
        "load_counted",
        "loaded",
        "name",
        "polled",
        "pool",
        "pulled",
        "resident",
        "url",
    )

    def __init__(self, url: str, name: str, pool: str) -> None:
        self.url = url
        self.name = name
        self.pool = pool
        self.loaded: dict[str, float] = {}  # model → until (monotonic): what routing believes
        self.resident: set[str] = set()  # models seen in memory (loads are counted on entry)
        self.load_counted: dict[str, float] = {}  # model → when a poll counted its load
        self.pulled: frozenset[str] | None = None  # None until the first /api/tags answer
        self.polled = False  # /api/ps read once: what is in memory then was not loaded by us
        self.in_flight = 0  # this gateway process's requests there
        self.elsewhere = 0  # other gateways' (and workers'), as of the last poll
        self.by_model: dict[str, int] = {}


class Route:
    """One attempt's hold on a replica, released once the call is over."""

    __slots__ = ("model", "reason", "released", "state")

    def __init__(self, state: ReplicaState, model: str, reason: Reason) -> None:
        self.state = state
        self.model = model
        self.reason = reason
        self.released = False

    @property
    def url(self) -> str:
        return self.state.url


def no_replica(alias: str) -> ApiError:
    return ApiError(
        503,
        f"No replica of the model `{alias}` can take the request now; please retry.",
        type="server_error",
        code="no_replica_available",
        headers={"retry-after": "1", "retry-after-ms": "1000"},
    )


def _kind(exc: UpstreamError) -> str | None:
    """The retry rule's name for an upstream failure (None: not one a retry can fix)."""
    if exc.kind == "unreachable":
        return "connect"
    if exc.kind == "failed":  # reset or closed before any byte of a response
        return "reset_before_response"
    return None  # timeout: the replica may still be working on it


def _until(expires_at: Any, now: float, wall: datetime) -> float:
    if isinstance(expires_at, str):
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(_FRACTION.sub(r"\1", expires_at.replace("Z", "+00:00")))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return now + (when - wall).total_seconds()
    return now + KEEP_ALIVE


class Router:
    def __init__(
        self,
        upstream: Upstream,
        targets: Callable[[], Awaitable[Iterable[Routed]]],
        *,
        poll_seconds: float = 2.0,
        attempts: int = 3,
        retry_seconds: float = 10.0,
        ejector: Ejector | None = None,
        shared: SharedLoad | None = None,
    ) -> None:
        self.upstream = upstream
        self.shared = shared
        self._targets = targets
        self.poll_seconds = poll_seconds
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self.ejector = ejector or Ejector()
        self._states: dict[str, ReplicaState] = {}
        self._counters: dict[str, int] = {}
        self._pulled: dict[str, frozenset[str]] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._soon: set[asyncio.Task[None]] = set()
        self._timeout = aiohttp.ClientTimeout(total=max(1.0, min(poll_seconds, 5.0)))

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="router-poll")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._soon) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- per request -------------------------------------------------------------------
    def _state(self, target: Target, pool: str) -> ReplicaState:
        state = self._states.get(target.url)
        if state is None:
            state = self._states[target.url] = ReplicaState(target.url, target.name, pool)
            self._child(metrics.REPLICA_UP, pool, target.name).set(1)
        return state

    def pick(
        self, alias: Routed, prefix: bytes | None, tried: set[str], now: float
    ) -> Route | None:
        targets = alias.replicas or ()
        model = normalize_model(alias.backend_tag)
        pulled = self._pulled.get(model)
        if pulled is None:
            pulled = self._pulled[model] = frozenset((model,))
        exclude = self.ejector.ejected(now)
        exclude.update(tried)
        replicas = []
        for target in targets:
            state = self._state(target, alias.pool)
            replicas.append(
                Replica(
                    name=state.url,
                    url=state.url,
                    pulled=pulled if state.pulled is None else state.pulled,
                    loaded=state.loaded,
                    in_flight=state.in_flight + state.elsewhere,
                )
            )
        config = alias.routing
        counter = 0
        if config.policy is Policy.ROUND_ROBIN:
            counter = self._counters.get(alias.alias, 0)
            self._counters[alias.alias] = counter + 1
        decision = choose(
            replicas, model, config=config, now=now, prefix=prefix, exclude=exclude, counter=counter
        )
        if decision is None:
            return None
        state = self._states[decision.replica.url]
        self.ejector.available(state.url, now)  # claims the probe of a replica back from rest
        state.in_flight += 1
        state.by_model[model] = state.by_model.get(model, 0) + 1
        if not state.loaded.get(model, 0.0) > now:
            # It loads the model now: later requests for it follow instead of loading it
            # elsewhere too (the next poll tells what it evicted).
            state.loaded[model] = now + KEEP_ALIVE
        self._child(metrics.ROUTING_DECISIONS, state.pool, state.name, decision.reason).inc()
        self._child(metrics.REPLICA_IN_FLIGHT, state.pool, state.name, model).inc()
        return Route(state, model, decision.reason)

    def release(self, route: Route, load_ns: int | None = None) -> None:
        """The call is over: in flight no more; a reported load is counted."""
        if route.released:
            return
        route.released = True
        state, model = route.state, route.model
        state.in_flight -= 1
        left = state.by_model.get(model, 1) - 1
        if left:
            state.by_model[model] = left
        else:
            state.by_model.pop(model, None)
        self._child(metrics.REPLICA_IN_FLIGHT, state.pool, state.name, model).dec()
        if load_ns is not None and load_ns / 1e9 > LOAD_SECONDS:
            seconds = load_ns / 1e9
            now = time.monotonic()
            self._child(metrics.MODEL_LOAD_SECONDS, state.pool, state.name, model).inc(seconds)
            counted = state.load_counted.pop(model, None)
            if counted is None or now - counted > 2 * self.poll_seconds + seconds:
                self._child(metrics.MODEL_LOADS, state.pool, state.name, model).inc()
            if model not in state.resident:
                state.resident.add(model)
                self._child(metrics.REPLICA_MODEL_LOADED, state.pool, state.name, model).set(1)
        if route.reason is Reason.COLD:
            self.poll_soon(state)  # what did the load evict?

    async def send(
        self,
        alias: Routed,
        path: str,
        body: bytes,
        prefix: bytes | None,
        headers: dict[str, str] | None = None,
    ) -> tuple[UpstreamResponse, Route]:
        """The response of the first replica that answers. A failure before any byte of an
        answer (refused, reset, Ollama's 503) goes to another replica, at most ``attempts``
        tries in all and none begun after ``retry_seconds``."""
        now = time.monotonic()
        budget = RetryBudget(self.attempts, now + self.retry_seconds)
        tried: set[str] = set()
        failure: ApiError | None = None
        last_kind = ""
        while budget.next(now):
            route = self.pick(alias, prefix, tried, now)
            if route is None:
                break
            if failure is not None:
                self._child(metrics.ROUTING_RETRIES, alias.pool, last_kind).inc()
            tried.add(route.url)
            try:
                resp = await self.upstream.request("POST", route.url + path, body, headers)
            except UpstreamError as exc:
                self.release(route)
                kind = _kind(exc)
                if kind is None or not retryable(kind, 0):
                    raise
                self._failed(route.state, hard=kind == "connect")
                failure = upstream_failure(exc)
                failure.__cause__ = exc
                last_kind = kind
                now = time.monotonic()
                continue
            except BaseException:
                self.release(route)
                raise
            if resp.status == 503:  # Ollama's queue is full there: another replica may have room
                try:
                    payload = await read_body(resp)
                except BaseException:
                    resp.close()
                    self.release(route)
                    raise
                resp.release()
                self.release(route)
                failure = upstream_error(503, payload, alias.alias)
                last_kind = "busy_503"
                now = time.monotonic()
                continue
            self.ejector.success(route.url)
            return resp, route
        if failure is not None:
            raise failure
        raise no_replica(alias.alias)

    def _failed(self, state: ReplicaState, hard: bool) -> None:
        if self.ejector.failure(state.url, time.monotonic(), hard=hard):
            log.warning("replica %s of %s ejected after failures", state.name, state.pool)
            self._child(metrics.REPLICA_EJECTIONS, state.pool, state.name).inc()
            self._child(metrics.REPLICA_UP, state.pool, state.name).set(0)

    # -- polling -----------------------------------------------------------------------
    async def _known(self) -> dict[str, tuple[Target, str]]:
        known: dict[str, tuple[Target, str]] = {}
        for alias in await self._targets():
            for target in alias.replicas or ():
                known[target.url] = (target, alias.pool)
        return known

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except ApiError:
                pass  # the catalog cannot be read (database outage): try again later
            except Exception:  # a bug must not stop polling
                log.exception("polling the replicas failed")
            await asyncio.sleep(self.poll_seconds)

    async def poll_once(self) -> None:
        known = await self._known()
        for url in [u for u in self._states if u not in known]:
            self._forget(self._states[url])
        states = [self._state(target, pool) for target, pool in known.values()]
        await asyncio.gather(*(self._poll(s) for s in states))
        if self.shared is not None and states:
            elsewhere = await self.shared.exchange({s.url: s.in_flight for s in states})
            for state in states:
                state.elsewhere = elsewhere.get(state.url, 0)

    def poll_soon(self, state: ReplicaState) -> None:
        task = asyncio.get_running_loop().create_task(self._poll(state))
        self._soon.add(task)
        task.add_done_callback(self._soon.discard)

    def _forget(self, state: ReplicaState) -> None:
        """A replica left every alias (scaled down, replaced, unlisted): its series go.
        Requests still in flight there finish; their releases touch only this object."""
        del self._states[state.url]
        self.ejector.forget(set(self._states))
        with contextlib.suppress(KeyError):
            metrics.REPLICA_UP.remove(state.pool, state.name)
        for model in state.resident:
            with contextlib.suppress(KeyError):
                metrics.REPLICA_MODEL_LOADED.remove(state.pool, state.name, model)
        self._children.clear()

    async def _get(self, state: ReplicaState, path: str) -> Any:
        session = self.upstream.session
        async with session.get(state.url + path, timeout=self._timeout) as resp:
            if resp.status != 200:
                return None
            return orjson.loads(await resp.read())

    async def _poll(self, state: ReplicaState) -> None:
        try:
            ps, tags = await asyncio.gather(
                self._get(state, "/api/ps"), self._get(state, "/api/tags")
            )
        except aiohttp.ClientConnectorError:
            self._failed(state, hard=True)  # nothing listens there
            return
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, ValueError):
            return  # busy or odd: the requests' own outcomes decide
        now = time.monotonic()
        if self.ejector.due(state.url, now):
            # The probe of an ejected replica whose backoff is over: it answers again.
            self.ejector.success(state.url)
            log.info("replica %s of %s back in rotation", state.name, state.pool)
        if state.url not in self.ejector.ejected(now):
            self._child(metrics.REPLICA_UP, state.pool, state.name).set(1)
        if isinstance(tags, dict):
            state.pulled = frozenset(
                normalize_model(str(m.get("name") or m.get("model")))
                for m in tags.get("models") or ()
                if isinstance(m, dict)
            )
        if isinstance(ps, dict):
            self._observe_ps(state, ps.get("models") or [])

    def _observe_ps(self, state: ReplicaState, models: list[Any]) -> None:
        now, wall = time.monotonic(), datetime.now(UTC)
        seen: dict[str, float] = {}
        for entry in models:
            if isinstance(entry, dict):
                name = normalize_model(str(entry.get("name") or entry.get("model")))
                seen[name] = _until(entry.get("expires_at"), now, wall)
        for model in seen.keys() - state.resident:
            if state.polled:
                state.load_counted[model] = now
                self._child(metrics.MODEL_LOADS, state.pool, state.name, model).inc()
            self._child(metrics.REPLICA_MODEL_LOADED, state.pool, state.name, model).set(1)
        state.polled = True
        for model in state.resident - seen.keys():
            with contextlib.suppress(KeyError):
                metrics.REPLICA_MODEL_LOADED.remove(state.pool, state.name, model)
        state.resident = set(seen)
        # A model being loaded for a request in flight may not be listed yet: kept.
        for model, until in state.loaded.items():
            if model not in seen and state.by_model.get(model):
                seen[model] = until
        state.loaded = seen

    def _child(self, metric: Any, *labels: str) -> Any:
        found = self._children.get((metric, labels))
        if found is None:
            if len(self._children) >= 10_000:
                self._children.clear()
            found = self._children[(metric, labels)] = metric.labels(*labels)
        return found


class SharedLoad:
    """Requests in flight per replica, shared by every gateway process through Redis.

    Exchanged once per poll, in one pipeline, never on a request's path: each process writes
    its own count (with the time) into a hash per replica and reads the others'. Counts older
    than three polls are of a process that died and are dropped. A Redis outage leaves each
    process balancing its own requests only."""

    def __init__(self, redis: Any, poll_seconds: float, prefix: str = "tg:inflight:") -> None:
        self._redis = redis
        self._stale = 3 * poll_seconds
        self._prefix = prefix
        self.me = secrets.token_hex(8)

    async def exchange(self, mine: dict[str, int]) -> dict[str, int]:
        now = time.time()
        urls = list(mine)
        try:
            with reraise_lost_cancel():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for url in urls:
                        key = self._prefix + url
                        pipe.hset(key, self.me, f"{mine[url]}:{now:.3f}")
                        pipe.expire(key, max(1, math.ceil(self._stale * 10)))
                        pipe.hgetall(key)
                    replies = await pipe.execute()
        except Exception as exc:  # Redis away: each process balances its own
            log.debug("could not share in-flight counts: %s", exc)
            return {}
        out: dict[str, int] = {}
        stale: list[tuple[str, bytes]] = []
        for i, url in enumerate(urls):
            total = 0
            for field, value in (replies[3 * i + 2] or {}).items():
                if field in (self.me, self.me.encode()):
                    continue
                count, _, when = (value.decode() if isinstance(value, bytes) else value).partition(
                    ":"
                )
                try:
                    if now - float(when) > self._stale:
                        stale.append((self._prefix + url, field))
                        continue
                    total += max(0, int(count))
                except ValueError:
                    continue
            out[url] = total
        if stale:
            with contextlib.suppress(Exception), reraise_lost_cancel():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, field in stale:
                        pipe.hdel(key, field)
                    await pipe.execute()
        return out
