"""An OllamaPool's children: NetworkPolicy, ServiceAccount, StatefulSet, ClusterIP and
headless Services, PodDisruptionBudget.

Isolation: Ollama has no authentication and serves ``/api/pull``, ``/api/delete`` and
``/api/create`` to anyone who reaches it, so only the gateway's Pods (and the operator's, for
pulls) may: a NetworkPolicy admits ingress on the Ollama port from those Pods only (a CNI
must enforce it). The Pods run as a ServiceAccount of their own with no token mounted.

Security: Ollama's image runs as root and keeps everything under ``$HOME/.ollama``. Here it
runs as a non-root user (``uid``, any uid works, e.g. OpenShift's random one) with a
read-only root filesystem. ``HOME`` points at the models volume, so the identity key Ollama
writes at start lands there, and ``OLLAMA_MODELS`` is a folder on the same volume;
``fsGroup`` makes the volume writable for that user; ``/tmp`` is an emptyDir.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tollgate_operator.builders.labels import pool_labels, pool_selector
from tollgate_operator.resources import OllamaPoolSpec

DATA_VOLUME = "models"
DATA_DIR = "/var/lib/ollama"
MODELS_DIR = f"{DATA_DIR}/models"
CONTAINER = "ollama"
RESERVED_ENV = ("OLLAMA_HOST", "OLLAMA_MODELS", "HOME")


@dataclass(frozen=True)
class Peer:
    """Pods that may reach a pool's Ollama port: these labels, in this namespace ("*": any)."""

    labels: Mapping[str, str]
    namespace: str = "*"

    def to_wire(self) -> dict[str, Any]:
        namespaces: dict[str, Any] = (
            {}
            if self.namespace == "*"
            else {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}}
        )
        return {"namespaceSelector": namespaces, "podSelector": {"matchLabels": dict(self.labels)}}


@dataclass(frozen=True)
class PoolDefaults:
    image: str
    port: int = 11434
    uid: int = 1000
    # Who may reach Ollama (None: no NetworkPolicy, for platforms that isolate otherwise).
    ingress_from: tuple[Peer, ...] | None = field(default=())


def headless_name(pool: str) -> str:
    return f"{pool}-headless"


def _env(spec: OllamaPoolSpec, port: int) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "OLLAMA_HOST", "value": f"0.0.0.0:{port}"},
        {"name": "HOME", "value": DATA_DIR},
        {"name": "OLLAMA_MODELS", "value": MODELS_DIR},
    ]
    for name, value in (
        ("OLLAMA_KEEP_ALIVE", spec.keep_alive),
        ("OLLAMA_NUM_PARALLEL", spec.num_parallel),
        ("OLLAMA_MAX_QUEUE", spec.max_queue),
    ):
        if value is not None:
            env.append({"name": name, "value": str(value)})
    managed = {e["name"] for e in env}
    for extra in spec.env:
        if extra.name in RESERVED_ENV:
            continue  # the CRD refuses these; a stale object must not break the Pod
        item = extra.model_dump(by_alias=True, exclude_none=True)
        if extra.name in managed:
            env = [e for e in env if e["name"] != extra.name]
        env.append(item)
    return env


def _resources(spec: OllamaPoolSpec) -> dict[str, Any]:
    requests = {k: str(v) for k, v in spec.resources.requests.items()}
    limits = {k: str(v) for k, v in spec.resources.limits.items()}
    if spec.gpus > 0:
        # Extended resources: requests must equal limits; the limit alone implies both.
        limits[spec.gpu_resource_name] = str(spec.gpus)
        requests.pop(spec.gpu_resource_name, None)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def _probe(path: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, **timing}


def build_statefulset(
    name: str,
    namespace: str,
    spec: OllamaPoolSpec,
    defaults: PoolDefaults,
    replicas: int | None = None,
) -> dict[str, Any]:
    """``replicas``: the autoscaler's count for a pool with spec.autoscaling (the scale
    subresource changes it; applying the same number keeps the two from disagreeing)."""
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or defaults.image,
        "args": ["serve"],
        "ports": [{"name": "http", "containerPort": defaults.port, "protocol": "TCP"}],
        "env": _env(spec, defaults.port),
        "resources": _resources(spec),
        # Ollama answers "Ollama is running" on / as soon as it listens.
        "startupProbe": _probe("/", periodSeconds=2, timeoutSeconds=3, failureThreshold=90),
        "readinessProbe": _probe("/", periodSeconds=5, timeoutSeconds=3, failureThreshold=3),
        # Generous: a model load can keep the server busy; a restart would abort it.
        "livenessProbe": _probe(
            "/api/version", periodSeconds=10, timeoutSeconds=5, failureThreshold=6
        ),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": DATA_VOLUME, "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 (a private emptyDir)
        ],
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    pod_spec: dict[str, Any] = {
        # Ollama never talks to the API server: an account of its own, and no token.
        "serviceAccountName": service_account_name(name),
        "automountServiceAccountToken": False,
        # A Service named like an OLLAMA_* variable must not leak env into the container.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": defaults.uid,
            "runAsGroup": defaults.uid,
            "fsGroup": defaults.uid,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations
        ]
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class_name is not None:
        claim_spec["storageClassName"] = spec.storage.storage_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "labels": pool_labels(name)},
        "spec": {
            "replicas": spec.replicas if replicas is None else replicas,
            "serviceName": headless_name(name),
            # Replicas are independent model servers: start and stop them together.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": pool_selector(name)},
            "updateStrategy": {"type": "RollingUpdate"},
            # Downloaded models are worth keeping when scaling down and back up.
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "template": {"metadata": {"labels": pool_labels(name)}, "spec": pod_spec},
            "volumeClaimTemplates": [
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": DATA_VOLUME, "labels": pool_selector(name)},
                    "spec": claim_spec,
                }
            ],
        },
    }


def _service(name: str, namespace: str, pool: str, port: int, headless: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "ClusterIP",
        "selector": pool_selector(pool),
        "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
    }
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": pool_labels(pool)},
        "spec": spec,
    }


def build_service(pool: str, namespace: str, port: int) -> dict[str, Any]:
    """What gateways talk to: one address for all replicas."""
    return _service(pool, namespace, pool, port, headless=False)


def build_headless_service(pool: str, namespace: str, port: int) -> dict[str, Any]:
    """The StatefulSet's governing Service: a DNS name per replica."""
    return _service(headless_name(pool), namespace, pool, port, headless=True)


def build_pdb(pool: str, namespace: str) -> dict[str, Any]:
    """Voluntary disruptions (drains) take one replica at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": pool, "namespace": namespace, "labels": pool_labels(pool)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": pool_selector(pool)}},
    }


def service_account_name(pool: str) -> str:
    """Not the pool's own name: a pool named "default" must not take over the namespace's
    default ServiceAccount."""
    return f"{pool}-ollama"


def build_service_account(pool: str, namespace: str) -> dict[str, Any]:
    """The pool Pods' identity: bound to nothing, its token never mounted."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": service_account_name(pool),
            "namespace": namespace,
            "labels": pool_labels(pool),
        },
        "automountServiceAccountToken": False,
    }


def build_network_policy(
    pool: str, namespace: str, port: int, peers: tuple[Peer, ...]
) -> dict[str, Any]:
    """Ingress to the pool's Pods: the Ollama port, from `peers` only; nothing else at all.

    Egress stays open (pulls reach registries). Kubelet probes come from the node, which
    NetworkPolicy implementations admit to local Pods.
    """
    ingress: list[dict[str, Any]] = []
    if peers:
        ingress.append(
            {
                "from": [peer.to_wire() for peer in peers],
                "ports": [{"port": port, "protocol": "TCP"}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": pool, "namespace": namespace, "labels": pool_labels(pool)},
        "spec": {
            "podSelector": {"matchLabels": pool_selector(pool)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def build_pool_children(
    name: str,
    namespace: str,
    spec: OllamaPoolSpec,
    defaults: PoolDefaults,
    replicas: int | None = None,
) -> list[dict[str, Any]]:
    """In the order they are applied: the policy before any Pod exists, the account before
    the StatefulSet that names it."""
    isolation = (
        []
        if defaults.ingress_from is None
        else [build_network_policy(name, namespace, defaults.port, defaults.ingress_from)]
    )
    return [
        *isolation,
        build_service_account(name, namespace),
        build_service(name, namespace, defaults.port),
        build_headless_service(name, namespace, defaults.port),
        build_statefulset(name, namespace, spec, defaults, replicas),
        build_pdb(name, namespace),
    ]
