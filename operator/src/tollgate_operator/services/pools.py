"""OllamaPool → NetworkPolicy, ServiceAccount, StatefulSet, Services and PodDisruptionBudget;
status from its Pods. Specs the platform does not allow (pool_rules.py) are refused."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from tollgate_operator import metrics
from tollgate_operator.builders.labels import pool_selector, selector_string
from tollgate_operator.builders.pool import Peer, PoolDefaults, build_pool_children
from tollgate_operator.k8s import Kube, pod_is_ready
from tollgate_operator.ollama import OllamaClient
from tollgate_operator.resources import (
    ObjectRef,
    OllamaPoolSpec,
    OllamaPoolStatus,
    PoolPod,
    set_condition,
)
from tollgate_operator.services.autoscaler import (
    Autoscaler,
    changed_meanwhile,
    statefulset_replicas,
)
from tollgate_operator.services.common import (
    EventSink,
    Locks,
    StatusWriter,
    parse_spec,
    parse_status,
    ready_changed,
    utcnow,
)
from tollgate_operator.services.errors import InvalidSpec, ReconcileError, Unavailable, Waiting
from tollgate_operator.services.pool_rules import PoolRules
from tollgate_operator.settings import Settings, parse_selector

logger = logging.getLogger(__name__)


def backend_url(template: str, pool: str, namespace: str, port: int, cluster_ip: str = "") -> str:
    """Where gateways reach a pool (its ClusterIP Service), from TOLLGATE_BACKEND_URL_TEMPLATE."""
    return template.format(name=pool, namespace=namespace, port=port, cluster_ip=cluster_ip)


def pod_url(pod: dict[str, Any], port: int) -> str:
    return f"http://{pod['status']['podIP']}:{port}"


def pod_name(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def pool_defaults(settings: Settings) -> PoolDefaults:
    peers = (
        Peer(parse_selector(settings.gateway_pod_selector), settings.gateway_namespace),
        Peer(parse_selector(settings.operator_pod_selector), settings.operator_namespace),
    )
    return PoolDefaults(
        image=settings.ollama_image,
        port=settings.ollama_port,
        uid=settings.ollama_uid,
        ingress_from=peers if settings.pool_network_policy else None,
    )


class PoolService:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        ollama: OllamaClient,
        locks: Locks,
        statuses: StatusWriter,
        events: EventSink,
        scaler: Autoscaler | None = None,
    ) -> None:
        self._settings = settings
        self._scaler = scaler
        self._kube = kube
        self._ollama = ollama
        self._locks = locks
        self._statuses = statuses
        self._events = events
        self.defaults = pool_defaults(settings)
        self.rules = PoolRules.of(
            settings.allowed_image_list,
            settings.ollama_image,
            env_from_secrets=settings.allow_env_from_secrets,
            env_from_config_maps=settings.allow_env_from_config_maps,
        )

    async def reconcile(self, ref: ObjectRef) -> OllamaPoolStatus:
        """Apply the children (server-side apply: a no-op when nothing drifted), then observe."""
        async with self._locks.hold(ref.key):
            status = parse_status(OllamaPoolStatus, self._statuses.current(ref))
            try:
                spec = parse_spec(OllamaPoolSpec, ref)
                self.rules.check(spec)
                replicas = statefulset_replicas(spec, status)
                scaler = self._scaler if spec.autoscaling is not None else None
                children = build_pool_children(
                    ref.name, ref.namespace, spec, self.defaults, replicas
                )
                for manifest in children:
                    kopf.adopt(manifest, owner=dict(ref.body))  # type: ignore[arg-type]
                    try:
                        if scaler is not None and manifest["kind"] == "StatefulSet":
                            await self._apply_autoscaled(ref, status, scaler, manifest, replicas)
                        else:
                            await self._kube.apply(manifest)
                    except ApiException as exc:
                        if exc.status in (400, 422):
                            raise InvalidSpec(
                                "Rejected",
                                f"{manifest['kind']} {ref.name} was refused: {exc.reason}",
                            ) from exc
                        raise
                return await self._observe(ref, spec, status, replicas)
            except ReconcileError as err:
                await self._failed(ref, status, err)
                raise

    async def _apply_autoscaled(
        self,
        ref: ObjectRef,
        status: OllamaPoolStatus,
        scaler: Autoscaler,
        manifest: dict[str, Any],
        replicas: int,
    ) -> None:
        """Apply an autoscaled pool's StatefulSet, setting back a size someone else gave it:
        read right before the apply, and tell a scale that came in between by the
        generations."""
        sts = await self._kube.get("apps/v1", "StatefulSet", ref.namespace, ref.name)
        said = await scaler.restore_manual_scale(ref, status, sts, replicas)
        applied = await self._kube.apply(manifest)
        if not said and changed_meanwhile(sts, applied):
            scaler.reverted_meanwhile(ref, replicas)

    async def pods(self, namespace: str, pool: str) -> list[dict[str, Any]]:
        pods = await self._kube.list_objects(
            "v1", "Pod", namespace, selector_string(pool_selector(pool))
        )
        return sorted(pods, key=pod_name)

    async def service_url(self, namespace: str, pool: str) -> str:
        template = self._settings.backend_url_template
        cluster_ip = ""
        if "{cluster_ip}" in template:
            service = await self._kube.get("v1", "Service", namespace, pool)
            cluster_ip = ((service or {}).get("spec") or {}).get("clusterIP") or ""
            if not cluster_ip or cluster_ip == "None":
                raise Waiting("ServiceNotReady", f"Service {pool} has no cluster IP yet", delay=2)
        return backend_url(template, pool, namespace, self._settings.ollama_port, cluster_ip)

    async def _observe(
        self, ref: ObjectRef, spec: OllamaPoolSpec, status: OllamaPoolStatus, replicas: int
    ) -> OllamaPoolStatus:
        pods = await self.pods(ref.namespace, ref.name)
        entries = await asyncio.gather(*(self._pod_entry(p) for p in pods))
        ready = sum(1 for e in entries if e.ready)
        desired = replicas
        if spec.autoscaling is not None and status.desired_replicas is not None:
            desired = status.desired_replicas
        if desired == 0 and spec.autoscaling is not None:
            ok, reason = True, "ScaledToZero"
            message = (
                "No replicas until a request arrives; it is held up to "
                f"{spec.autoscaling.cold_start_seconds} s while one starts"
            )
        elif desired == 0:
            ok, reason, message = True, "ScaledToZero", "The pool has no replicas"
        elif ready >= desired:
            ok, reason, message = True, "ReplicasReady", f"{ready}/{desired} replicas ready"
        elif ready > 0 and spec.autoscaling is not None:
            ok, reason, message = True, "ScalingUp", f"{ready}/{desired} replicas ready"
        else:
            ok, reason = False, "ReplicasNotReady"
            message = f"{ready}/{desired} replicas ready"
        label = f"{ref.namespace}/{ref.name}"
        metrics.POOL_DESIRED_REPLICAS.labels(label).set(desired)
        metrics.POOL_REPLICAS.labels(label).set(replicas)
        metrics.POOL_READY_REPLICAS.labels(label).set(ready)
        conditions = set_condition(
            status.conditions, "Ready", ok, reason, message, ref.generation, utcnow()
        )
        if ready_changed(status.conditions, conditions):
            self._events(ref.body, "Normal" if ok else "Warning", reason, message)
        autoscaled: dict[str, Any] = {}
        if spec.autoscaling is not None:  # the autoscaler's fields, kept as it wrote them
            autoscaled = status.model_dump(
                include={
                    "demand",
                    "last_scale_time",
                    "last_scale_reason",
                    "draining_since",
                }
            )
        new = OllamaPoolStatus(
            desired_replicas=desired,
            **autoscaled,
            observed_generation=ref.generation,
            replicas=replicas,
            ready_replicas=ready,
            loaded_models=sum(len(e.loaded or ()) for e in entries),
            selector=selector_string(pool_selector(ref.name)),
            service_url=await self.service_url(ref.namespace, ref.name),
            pods=list(entries),
            conditions=conditions,
        )
        await self._statuses.write(ref, new)
        return new

    async def _pod_entry(self, pod: dict[str, Any]) -> PoolPod:
        if not pod_is_ready(pod):
            return PoolPod(name=pod_name(pod), ready=False, message=not_ready_message(pod))
        url = pod_url(pod, self._settings.ollama_port)
        try:
            models, loaded = await asyncio.gather(self._ollama.tags(url), self._ollama.ps(url))
        except Unavailable:
            return PoolPod(name=pod_name(pod), ready=True, message="Ollama does not answer")
        return PoolPod(name=pod_name(pod), ready=True, models=sorted(models), loaded=sorted(loaded))

    async def _failed(self, ref: ObjectRef, status: OllamaPoolStatus, err: ReconcileError) -> None:
        conditions = set_condition(
            status.conditions, "Ready", False, err.reason, err.message, ref.generation
        )
        if ready_changed(status.conditions, conditions):
            self._events(ref.body, "Warning", err.reason, err.message)
        try:
            await self._statuses.write(ref, status.model_copy(update={"conditions": conditions}))
        except Unavailable as exc:
            logger.warning("could not write the status of %s/%s: %s", ref.namespace, ref.name, exc)

    def forget(self, ref: ObjectRef) -> None:
        self._locks.forget(ref.key)
        self._statuses.forget(ref.key)
        label = f"{ref.namespace}/{ref.name}"
        for gauge in (
            metrics.POOL_DESIRED_REPLICAS,
            metrics.POOL_REPLICAS,
            metrics.POOL_READY_REPLICAS,
            metrics.POOL_DEMAND,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(label)
        if self._scaler is not None:
            self._scaler.forget(ref)


def not_ready_message(pod: dict[str, Any]) -> str:
    """Why a Pod is not ready, in the scheduler's or kubelet's words when they gave some
    ("Pod is Pending: 0/1 nodes are available: pod has unbound immediate
    PersistentVolumeClaims"), not only its phase."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    for condition in status.get("conditions") or ():
        if condition.get("status") == "False" and condition.get("type") == "PodScheduled":
            reason = condition.get("message") or condition.get("reason")
            if reason:
                return f"Pod is {phase}, not scheduled: {reason}"
    for container in status.get("containerStatuses") or ():
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            detail = f" ({waiting['message']})" if waiting.get("message") else ""
            return f"Pod is {phase}, container {container.get('name')}: {waiting['reason']}{detail}"
    return f"Pod is {phase}, not ready"
