"""ModelAlias → the tag pulled on every replica of its pool, and its row in ``models``.

A daemon per alias runs passes: observe the pool's ready Pods and what each holds
(``/api/tags``), pull where the tag is missing (streaming ``/api/pull``, progress in
status), then write the row and status. Pod events of the pool wake it, so a new or
replaced replica gets the model without waiting for the resync interval.

The gateway routes the alias to ``status.servingModel``: the tag, once it is on every
replica. Until then a new alias is registered disabled, and an alias whose tag changed
keeps routing to the previous tag (no outage while the new one downloads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tollgate_operator import metrics
from tollgate_operator.db import Database, Duplicate, Row, RowPlan
from tollgate_operator.k8s import Kube, pod_is_ready
from tollgate_operator.ollama import OllamaClient, PullFailed, PullProgress, normalize_tag
from tollgate_operator.resources import (
    MODELALIASES,
    OLLAMAPOOLS,
    ModelAliasSpec,
    ModelAliasStatus,
    ObjectRef,
    OllamaPoolSpec,
    PullState,
    ReplicaPull,
    set_condition,
)
from tollgate_operator.services.common import (
    EventSink,
    Locks,
    StatusWriter,
    Wakers,
    parse_spec,
    parse_status,
    ready_changed,
    utcnow,
)
from tollgate_operator.services.errors import InvalidSpec, ReconcileError, Unavailable
from tollgate_operator.services.pools import PoolService, pod_name, pod_url
from tollgate_operator.settings import Settings

logger = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 5.0
SHORT_WAIT_SECONDS = 5.0
COLD = "cold"  # the replica has the tag on disk, not in memory (warmModels)


class AliasTaken(Exception):
    def __init__(self, owner: str | None) -> None:
        super().__init__(owner)
        self.owner = owner


# Columns the operator keeps current from the Pods: their changes are not hand edits.
ROUTING_COLUMNS = frozenset({"replicas", "routing"})


@dataclass(frozen=True)
class Routing:
    """What the gateway routes the alias over: the replicas that hold the served tag and may
    take traffic (ready, not terminating, pull finished), and the pool's spec.routing.
    ``replicas`` None: route to ``backend_url`` (the pool's Service)."""

    replicas: list[dict[str, str]] | None
    routing: dict[str, Any]


def ordinal(pod: str, pool: str) -> int | None:
    """A StatefulSet Pod's ordinal (``small-2`` of pool ``small``: 2)."""
    prefix, _, number = pod.rpartition("-")
    return int(number) if prefix == pool and number.isdigit() else None


def in_rotation(pod: dict[str, Any], seen: Observation) -> bool:
    """Not chosen for removal: an autoscaled pool's replicas above its decision drain."""
    if seen.pool_spec.autoscaling is None:
        return True
    number = ordinal(pod_name(pod), seen.pool)
    return number is None or number < seen.target


def routing_of(
    ref: ObjectRef, spec: ModelAliasSpec, seen: Observation, serving: str | None, port: int
) -> Routing:
    rules = seen.pool_spec.routing_row(f"{ref.namespace}/{spec.pool_ref.name}")
    if serving is None or normalize_tag(serving) != normalize_tag(spec.model):
        # Switching tags: which replicas still hold the old one is not known here.
        return Routing(None, rules)
    replicas = [
        {"name": pod_name(p), "url": pod_url(p, port)}
        for p in seen.pods
        if pod_is_ready(p)
        and in_rotation(p, seen)
        and p["metadata"]["uid"] not in seen.to_warm
        and (entry := seen.entries.get(pod_name(p))) is not None
        and entry.state == PullState.PRESENT
    ]
    return Routing(sorted(replicas, key=lambda r: r["name"]), rules)


def desired_model_row(
    ref: ObjectRef,
    spec: ModelAliasSpec,
    backend_url: str,
    serving: str | None,
    routing: Routing | None = None,
) -> Row:
    row: Row = {
        "alias": spec.alias,
        "backend_tag": serving or spec.model,
        "backend_url": backend_url,
        "enabled": spec.enabled and serving is not None,
        # Wanted but not servable yet (pulling): the gateway answers "not ready yet".
        "pending": spec.enabled and serving is None,
        "input_price_per_mtok": spec.prices.input_per_million_tokens,
        "output_price_per_mtok": spec.prices.output_per_million_tokens,
        "managed_by": ref.managed_by,
        "request_policy": None if spec.request_policy is None else spec.request_policy.to_row(),
    }
    if routing is not None:  # None: not observed in this pass, the row keeps what it has
        row["replicas"] = routing.replicas
        row["routing"] = routing.routing
    return row


def plan_model_row(rows: list[Row], desired: Row, *, create: bool = True) -> RowPlan:
    """This resource's row as desired; another owner's row with the alias is a conflict."""
    plan = RowPlan()
    taken = [
        r
        for r in rows
        if r["alias"] == desired["alias"] and r["managed_by"] != desired["managed_by"]
    ]
    if taken:
        raise AliasTaken(taken[0]["managed_by"])
    mine = sorted(
        (r for r in rows if r["managed_by"] == desired["managed_by"]),
        key=lambda r: r["alias"] != desired["alias"],
    )
    if not mine:
        if create:
            plan.inserts.append({"id": uuid.uuid4(), **desired})
            plan.notes.append("inserted")
        return plan
    keep, extra = mine[0], mine[1:]
    plan.current_id = keep["id"]
    plan.deletes.extend(r["id"] for r in extra)
    changes = {k: v for k, v in desired.items() if keep.get(k) != v}
    if changes:
        plan.updates.append((keep["id"], changes))
        plan.notes.append("updated:" + ",".join(sorted(changes)))
    return plan


@dataclass
class PullMemory:
    """What a daemon remembers between passes: failed pulls and when to retry them, and the
    replicas it loaded the model on (warmModels)."""

    failures: dict[str, tuple[int, float, str]] = field(default_factory=dict)
    max_delay: float = 300.0
    warmed: set[str] = field(default_factory=set)

    def due(self, pod_uid: str, now: float) -> bool:
        entry = self.failures.get(pod_uid)
        return entry is None or entry[1] <= now

    def failed(self, pod_uid: str, message: str, now: float) -> None:
        count = self.failures.get(pod_uid, (0, 0.0, ""))[0] + 1
        delay = min(self.max_delay, RETRY_FIRST_SECONDS * 2 ** (count - 1))
        self.failures[pod_uid] = (count, now + delay, message)

    def succeeded(self, pod_uid: str) -> None:
        self.failures.pop(pod_uid, None)

    def next_retry(self, now: float) -> float | None:
        times = [t - now for _, t, _ in self.failures.values()]
        return max(0.5, min(times)) if times else None


@dataclass
class Observation:
    pool_spec: OllamaPoolSpec
    backend_url: str
    pods: list[dict[str, Any]]
    entries: dict[str, ReplicaPull]
    to_pull: list[dict[str, Any]]
    pool: str = ""
    # Replicas the pool should have: spec.replicas, or the autoscaler's decision.
    target: int = 0
    # Pod uids that hold the model but must load it before they take traffic (warmModels).
    to_warm: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def at_zero(self) -> bool:
        """An autoscaled pool with no replicas: its aliases stay servable (requests wait)."""
        return self.pool_spec.autoscaling is not None and self.target == 0


def pool_target(spec: OllamaPoolSpec, status: dict[str, Any]) -> int:
    if spec.autoscaling is None:
        return spec.replicas
    for field_name in ("desiredReplicas", "replicas"):
        value = status.get(field_name)
        if isinstance(value, int):
            return value
    return spec.autoscaling.min_replicas


def warms(spec: OllamaPoolSpec, ref: ObjectRef, alias: ModelAliasSpec) -> bool:
    auto = spec.autoscaling
    return auto is not None and (ref.name in auto.warm_models or alias.alias in auto.warm_models)


class AliasService:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        db: Database,
        ollama: OllamaClient,
        pools: PoolService,
        locks: Locks,
        wakers: Wakers,
        statuses: StatusWriter,
        events: EventSink,
    ) -> None:
        self._settings = settings
        self._kube = kube
        self._db = db
        self._ollama = ollama
        self._pools = pools
        self._locks = locks
        self._wakers = wakers
        self._statuses = statuses
        self._events = events

    # -- handler entry points ---------------------------------------------------------------

    async def apply_spec(self, ref: ObjectRef) -> None:
        """On create/update/resume: the pool must exist and the alias be ours; then wake the
        daemon, which pulls and reports."""
        async with self._locks.hold(ref.key):
            status = parse_status(ModelAliasStatus, self._statuses.current(ref))
            try:
                spec = parse_spec(ModelAliasSpec, ref)
                pool = await self._kube.get_custom(OLLAMAPOOLS, ref.namespace, spec.pool_ref.name)
                if pool is None:
                    raise InvalidSpec(
                        "PoolNotFound",
                        f"OllamaPool {spec.pool_ref.name} does not exist in {ref.namespace}",
                    )
                url = await self._pools.service_url(ref.namespace, spec.pool_ref.name)
                serving = status.serving_model if status.serving_model else None
                await self._sync_row(ref, spec, url, serving)
            except ReconcileError as err:
                await self._failed(ref, status, err)
                raise
        self._wakers.wake(ref.key)

    async def delete(self, ref: ObjectRef, retry: int) -> None:
        """Remove the alias at the gateway; delete the model from the pool if asked and no
        other alias uses it there."""
        async with self._locks.hold(ref.key):
            await self._db.delete_models(ref.managed_by)
            try:
                spec = parse_spec(ModelAliasSpec, ref)
            except InvalidSpec:
                return
            if spec.delete_model_on_removal:
                await self._delete_model(ref, spec, retry)
        self._locks.forget(ref.key)
        self._statuses.forget(ref.key)

    # -- the daemon's pass -------------------------------------------------------------------

    async def sync(self, ref: ObjectRef, memory: PullMemory) -> float:
        """One pass; returns how long to wait before the next (woken earlier by Pod events)."""
        spec = parse_spec(ModelAliasSpec, ref)
        async with self._locks.hold(ref.key):
            status = parse_status(ModelAliasStatus, self._statuses.current(ref))
            try:
                seen = await self._observe(ref, spec, memory)
            except ReconcileError as err:
                await self._failed(ref, status, err)
                raise
            if seen is None:
                return self._settings.alias_resync_seconds
            if seen.to_pull:
                await self._write_progress(ref, seen)
        if seen.to_pull:
            await self._pull(ref, spec, seen, memory)
            return 0.0  # look again at once: the final state, and Pods that came meanwhile
        if seen.to_warm:
            await self._warm(ref, spec, seen, memory)
            return 0.0
        async with self._locks.hold(ref.key):
            status = parse_status(ModelAliasStatus, self._statuses.current(ref))
            try:
                return await self._settle(ref, spec, status, seen, memory)
            except ReconcileError as err:
                await self._failed(ref, status, err)
                raise

    async def _observe(
        self, ref: ObjectRef, spec: ModelAliasSpec, memory: PullMemory
    ) -> Observation | None:
        pool = await self._kube.get_custom(OLLAMAPOOLS, ref.namespace, spec.pool_ref.name)
        if pool is None:
            await self._pool_gone(ref, spec)
            return None
        pool_spec = OllamaPoolSpec.model_validate(pool.get("spec") or {})
        url = await self._pools.service_url(ref.namespace, spec.pool_ref.name)
        pods = await self._pools.pods(ref.namespace, spec.pool_ref.name)
        ready = [p for p in pods if pod_is_ready(p)]
        warm = warms(pool_spec, ref, spec)
        held = await asyncio.gather(*(self._holds(p, spec.model, warm, memory) for p in ready))
        entries = {
            pod_name(p): ReplicaPull(
                name=pod_name(p), state=PullState.WAITING, message="Pod not ready"
            )
            for p in pods
            if not pod_is_ready(p)
        }
        to_pull: list[dict[str, Any]] = []
        to_warm: dict[str, dict[str, Any]] = {}
        now = time.monotonic()
        for pod, state in zip(ready, held, strict=True):
            name, uid = pod_name(pod), pod["metadata"]["uid"]
            if state is True or state == COLD:
                entries[name] = ReplicaPull(name=name, state=PullState.PRESENT, percent=100)
                memory.succeeded(uid)
                if state == COLD:
                    to_warm[uid] = pod
            elif isinstance(state, str):
                entries[name] = ReplicaPull(name=name, state=PullState.UNREACHABLE, message=state)
            elif memory.due(uid, now):
                to_pull.append(pod)
                entries[name] = ReplicaPull(name=name, state=PullState.PULLING, percent=0)
            else:
                message = memory.failures[uid][2]
                entries[name] = ReplicaPull(name=name, state=PullState.FAILED, message=message)
        return Observation(
            pool_spec,
            url,
            pods,
            dict(sorted(entries.items())),
            to_pull,
            pool=spec.pool_ref.name,
            target=pool_target(pool_spec, pool.get("status") or {}),
            to_warm=to_warm,
        )

    async def _holds(
        self, pod: dict[str, Any], model: str, warm: bool, memory: PullMemory
    ) -> bool | str:
        """True/False: whether the replica has the tag; COLD: it has, but must load it
        before it takes traffic (warmModels); another string: why we could not tell."""
        url = pod_url(pod, self._settings.ollama_port)
        try:
            tags = await self._ollama.tags(url)
            if normalize_tag(model) not in tags:
                return False
            if not warm or pod["metadata"]["uid"] in memory.warmed:
                return True
            if normalize_tag(model) in await self._ollama.ps(url):
                memory.warmed.add(pod["metadata"]["uid"])
                return True
        except Unavailable as exc:
            return exc.message
        return COLD

    async def _warm(
        self, ref: ObjectRef, spec: ModelAliasSpec, seen: Observation, memory: PullMemory
    ) -> None:
        """Load the model on new replicas (an empty generate request) before they are
        listed for traffic, so the first user does not wait for the load."""

        async def one(uid: str, pod: dict[str, Any]) -> None:
            try:
                await self._ollama.load(pod_url(pod, self._settings.ollama_port), spec.model)
            except (Unavailable, PullFailed) as exc:
                self._events(
                    ref.body,
                    "Warning",
                    "WarmFailed",
                    f"Loading {spec.model} on {pod_name(pod)} failed: {exc}",
                )
            else:
                self._events(
                    ref.body, "Normal", "Warmed", f"{spec.model} loaded on {pod_name(pod)}"
                )
            memory.warmed.add(uid)  # once: a failed load does not keep it out of rotation

        await asyncio.gather(*(one(uid, pod) for uid, pod in seen.to_warm.items()))

    async def _pull(
        self, ref: ObjectRef, spec: ModelAliasSpec, seen: Observation, memory: PullMemory
    ) -> None:
        changed = asyncio.Event()

        async def one(pod: dict[str, Any]) -> None:
            name, uid = pod_name(pod), pod["metadata"]["uid"]
            progress = PullProgress()

            def on_update() -> None:
                seen.entries[name] = ReplicaPull(
                    name=name,
                    state=PullState.PULLING,
                    completed=progress.completed or None,
                    total=progress.total or None,
                    percent=progress.percent,
                    message=progress.status or None,
                )
                changed.set()

            began = time.monotonic()
            try:
                await self._ollama.pull(
                    pod_url(pod, self._settings.ollama_port), spec.model, progress, on_update
                )
            except PullFailed as exc:
                metrics.PULLS.labels("failed").inc()
                memory.failed(uid, f"pull failed: {exc}", time.monotonic())
                seen.entries[name] = ReplicaPull(
                    name=name, state=PullState.FAILED, message=f"pull failed: {exc}"
                )
                self._events(
                    ref.body,
                    "Warning",
                    "PullFailed",
                    f"Pulling {spec.model} on {name} failed: {exc}",
                )
            except Unavailable as exc:
                metrics.PULLS.labels("unreachable").inc()
                memory.failed(uid, exc.message, time.monotonic())
                seen.entries[name] = ReplicaPull(
                    name=name, state=PullState.UNREACHABLE, message=exc.message
                )
            else:
                metrics.PULLS.labels("success").inc()
                metrics.PULL_SECONDS.observe(time.monotonic() - began)
                memory.succeeded(uid)
                seen.entries[name] = ReplicaPull(name=name, state=PullState.PRESENT, percent=100)
                self._events(ref.body, "Normal", "Pulled", f"{spec.model} is on {name}")
            changed.set()

        async def reporter() -> None:
            while True:
                await changed.wait()
                changed.clear()
                async with self._locks.hold(ref.key):
                    with contextlib.suppress(ReconcileError):
                        await self._write_progress(ref, seen)
                await asyncio.sleep(self._settings.progress_interval_seconds)

        self._events(
            ref.body,
            "Normal",
            "Pulling",
            f"Pulling {spec.model} on {', '.join(pod_name(p) for p in seen.to_pull)}",
        )
        reporting = asyncio.create_task(reporter())
        try:
            await asyncio.gather(*(one(p) for p in seen.to_pull))
        finally:
            reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporting
        async with self._locks.hold(ref.key):
            with contextlib.suppress(ReconcileError):
                await self._write_progress(ref, seen)

    async def _write_progress(self, ref: ObjectRef, seen: Observation) -> None:
        present = sum(1 for e in seen.entries.values() if e.state == PullState.PRESENT)
        await self._statuses.merge(
            ref,
            {
                "pulled": f"{present}/{seen.target}",
                "pods": [e.to_wire() for e in seen.entries.values()],
            },
        )

    async def _settle(
        self,
        ref: ObjectRef,
        spec: ModelAliasSpec,
        status: ModelAliasStatus,
        seen: Observation,
        memory: PullMemory,
    ) -> float:
        """Conditions, the row and status from what the pass saw."""
        states = [e.state for e in seen.entries.values()]
        replicas = seen.target
        present = states.count(PullState.PRESENT)
        everywhere = (
            replicas > 0
            and present >= replicas
            and all(s == PullState.PRESENT for s in states if s != PullState.WAITING)
        )
        # An autoscaled pool at zero serves the tag the next replica will pull.
        serving = spec.model if everywhere or seen.at_zero else status.serving_model
        if seen.at_zero:
            pulled, reason = False, "ScaledToZero"
            message = "The pool is at zero replicas; a request starts one and waits for it"
        elif replicas == 0:
            pulled, reason, message = False, "NoReplicas", "The pool has no replicas"
        elif everywhere:
            pulled, reason = True, "PresentEverywhere"
            message = f"{spec.model} is on all {replicas} replicas"
        elif PullState.FAILED in states:
            pulled, reason = False, "PullFailed"
            failed = next(e for e in seen.entries.values() if e.state == PullState.FAILED)
            message = f"{failed.name}: {failed.message}"
        elif PullState.UNREACHABLE in states:
            pulled, reason = False, "ReplicaUnreachable"
            message = f"{states.count(PullState.UNREACHABLE)} replica(s) do not answer"
        else:
            pulled, reason = False, "WaitingForReplicas"
            message = f"{spec.model} is on {present} of {replicas} replicas"
        now = utcnow()
        conditions = set_condition(
            status.conditions, "Pulled", pulled, reason, message, ref.generation, now
        )

        routing = routing_of(ref, spec, seen, serving, self._settings.ollama_port)
        await self._sync_row(ref, spec, seen.backend_url, serving, routing)
        if not spec.enabled:
            ready, r_reason, r_message = False, "Disabled", "The alias is disabled (spec.enabled)"
        elif serving is None:
            ready, r_reason, r_message = False, reason, message
        elif serving != spec.model:
            ready, r_reason = False, "Switching"
            r_message = f"Serving {serving} until {spec.model} is on every replica"
        elif seen.at_zero:
            ready, r_reason, r_message = True, reason, message
        elif not pulled and not (seen.pool_spec.autoscaling is not None and present > 0):
            ready, r_reason, r_message = False, reason, message
        else:
            ready, r_reason = True, "Serving"
            r_message = f"{spec.alias} is served by {spec.model} on {replicas} replica(s)"
        conditions = set_condition(
            conditions, "Ready", ready, r_reason, r_message, ref.generation, now
        )
        if ready_changed(status.conditions, conditions):
            self._events(ref.body, "Normal" if ready else "Warning", r_reason, r_message)
        new = ModelAliasStatus(
            observed_generation=ref.generation,
            pulled=f"{present}/{replicas}",
            serving_model=serving,
            backend_url=seen.backend_url,
            pods=list(seen.entries.values()),
            conditions=conditions,
        )
        await self._statuses.write(ref, new)
        if ready and present == len(seen.pods):
            return self._settings.alias_resync_seconds
        retry = memory.next_retry(time.monotonic())
        waits = [self._settings.alias_resync_seconds]
        if retry is not None:
            waits.append(retry)  # a failed pull's next attempt
        if PullState.UNREACHABLE in states or PullState.WAITING in states or not ready:
            waits.append(SHORT_WAIT_SECONDS)  # replicas on their way: look again soon
        return min(waits)

    async def _pool_gone(self, ref: ObjectRef, spec: ModelAliasSpec) -> None:
        status = parse_status(ModelAliasStatus, self._statuses.current(ref))
        message = f"OllamaPool {spec.pool_ref.name} does not exist in {ref.namespace}"
        # Positive evidence the pool is gone: stop routing to it.
        await self._db.plan_models(
            spec.alias, ref.managed_by, lambda rows: _disable_mine(rows, ref.managed_by)
        )
        conditions = set_condition(
            status.conditions, "Pulled", False, "PoolNotFound", message, ref.generation
        )
        conditions = set_condition(
            conditions, "Ready", False, "PoolNotFound", message, ref.generation
        )
        if ready_changed(status.conditions, conditions):
            self._events(ref.body, "Warning", "PoolNotFound", message)
        new = ModelAliasStatus(observed_generation=ref.generation, conditions=conditions)
        await self._statuses.write(ref, new)

    async def _sync_row(
        self,
        ref: ObjectRef,
        spec: ModelAliasSpec,
        url: str,
        serving: str | None,
        routing: Routing | None = None,
    ) -> None:
        desired = desired_model_row(ref, spec, url, serving, routing)
        try:
            plan = await self._db.plan_models(
                spec.alias, ref.managed_by, lambda rows: plan_model_row(rows, desired)
            )
        except AliasTaken as exc:
            owner = exc.owner or "the admin API"
            raise InvalidSpec(
                "AliasConflict", f"alias {spec.alias!r} is already defined by {owner}"
            ) from exc
        except Duplicate as exc:
            raise InvalidSpec("AliasConflict", f"alias {spec.alias!r} is already defined") from exc
        status = parse_status(ModelAliasStatus, self._statuses.current(ref))
        hand_edit = status.observed_generation == ref.generation and status.serving_model == serving
        for note in plan.notes:
            if note.startswith("updated:") and set(note[8:].split(",")) <= ROUTING_COLUMNS:
                continue  # replicas came or went: not a hand edit
            if (
                hand_edit
                and status.conditions
                and (note == "inserted" or note.startswith("updated:"))
            ):
                metrics.DRIFT_REPAIRS.labels("model_row").inc()
                self._events(
                    ref.body,
                    "Warning",
                    "DriftRepaired",
                    f"The gateway row of alias {spec.alias!r} was "
                    + ("missing" if note == "inserted" else f"edited ({note[8:]})")
                    + "; restored",
                )

    async def _delete_model(self, ref: ObjectRef, spec: ModelAliasSpec, retry: int) -> None:
        tag = normalize_tag(spec.model)
        for other in await self._kube.list_custom(MODELALIASES, ref.namespace):
            meta = other.get("metadata") or {}
            other_spec = other.get("spec") or {}
            if (
                meta.get("uid") != ref.uid
                and not meta.get("deletionTimestamp")
                and (other_spec.get("poolRef") or {}).get("name") == spec.pool_ref.name
                and normalize_tag(str(other_spec.get("model", ""))) == tag
            ):
                self._events(
                    ref.body,
                    "Normal",
                    "ModelKept",
                    f"{spec.model} stays: ModelAlias {meta.get('name')} uses it",
                )
                return
        pods = [
            p for p in await self._pools.pods(ref.namespace, spec.pool_ref.name) if pod_is_ready(p)
        ]
        for pod in pods:
            try:
                await self._ollama.delete(pod_url(pod, self._settings.ollama_port), spec.model)
            except Unavailable as exc:
                if retry < 3:
                    raise
                self._events(
                    ref.body,
                    "Warning",
                    "ModelNotDeleted",
                    f"Could not delete {spec.model} from {pod_name(pod)}: {exc.message}",
                )
        if pods:
            self._events(ref.body, "Normal", "ModelDeleted", f"Deleted {spec.model} from the pool")

    async def _failed(self, ref: ObjectRef, status: ModelAliasStatus, err: ReconcileError) -> None:
        conditions = set_condition(
            status.conditions, "Ready", False, err.reason, err.message, ref.generation
        )
        if ready_changed(status.conditions, conditions):
            self._events(ref.body, "Warning", err.reason, err.message)
        try:
            await self._statuses.write(ref, status.model_copy(update={"conditions": conditions}))
        except Unavailable as exc:
            logger.warning("could not write the status of %s/%s: %s", ref.namespace, ref.name, exc)


def _disable_mine(rows: list[Row], managed_by: str) -> RowPlan:
    plan = RowPlan()
    for row in rows:
        if row["managed_by"] == managed_by and (row["enabled"] or row.get("pending")):
            plan.updates.append((row["id"], {"enabled": False, "pending": False}))
    return plan
