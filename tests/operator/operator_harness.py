"""Test harness for the operator: the operator as a process, and what the cluster lacks.

The local control plane has no storage provisioner, no container runtime and no
kube-proxy. ``FakeCluster`` plays those parts for the pools the operator creates:

* a PersistentVolume pre-bound to each pending claim of a pool (the provisioner);
* an Ollama stand-in listening on each running pool Pod's IP, port 11434 (the
  container the Pod would run), stopped when the Pod goes away;
* a TCP forwarder on each pool Service's ClusterIP, port 11434, to the ready Pods
  (kube-proxy), so the gateway reaches a pool through its Service address.

The operator itself runs as a real process (``OperatorProcess``). The fixtures that wire
all of it up are in conftest.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tollgate_dev.controlplane.roles import OLLAMA_PORT as OLLAMA_PORT
from tollgate_dev.controlplane.roles import POOL_LABEL as POOL_LABEL
from tollgate_dev.controlplane.roles import PROVISIONER as PROVISIONER
from tollgate_dev.controlplane.roles import STORAGE_CLASS as STORAGE_CLASS
from tollgate_dev.controlplane.roles import FakeCluster as FakeCluster
from tollgate_dev.plugins.cluster import ClusterHandle
from tollgate_dev.proc import ServiceError, free_port, stop_process, wait_http

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
SAMPLES = REPO / "manifests" / "samples"
GROUP, VERSION = "tollgate.dev", "v1alpha1"
PEPPER = "operator-test-pepper"
PULL_DELAY_MS = 1500
# Short intervals so drift, grace periods and retries show within seconds.
RESYNC_SECONDS = "2"

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll `probe` until it returns something truthy (or fail after `timeout`)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (ApiException, httpx.HTTPError, psycopg.Error) as exc:
            last, result = exc, None
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})")


# -- the operator as a process -------------------------------------------------------------


@dataclass
class OperatorProcess:
    """`python -m tollgate_operator` as a real process, configured through its environment."""

    env: dict[str, str]
    log_path: Path
    identity: str = "test-operator"
    # What it watches: every namespace, or e.g. ["--namespace", "team-a"].
    scope: tuple[str, ...] = ("--all-namespaces",)
    liveness_port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.liveness_port}/healthz"

    def start(self, timeout: float = 60, wait: bool = True) -> None:
        self.liveness_port = self.liveness_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        env = {
            **os.environ,
            **self.env,
            "TOLLGATE_IDENTITY": self.identity,
            "TOLLGATE_LIVENESS_ENDPOINT": self.liveness_url,
            "TOLLGATE_METRICS_PORT": str(self.metrics_port),
            "TOLLGATE_METRICS_HOST": "127.0.0.1",
        }
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {self.identity} starting\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tollgate_operator", *self.scope],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            try:
                wait_http(self.liveness_url, timeout, self.proc)
            except ServiceError as exc:
                pytest.fail(f"the operator did not start: {exc}\n{self.log_tail()}", pytrace=False)

    def leading(self) -> bool:
        """True once kopf serves the liveness endpoint (a standby answers {"standby": ...})."""
        try:
            response = httpx.get(self.liveness_url, timeout=2)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        body = response.json()
        return isinstance(body, dict) and "standby" not in body

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release, as a crashed Pod."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        self.proc = None
        return code

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# -- what the local control plane lacks: tollgate_dev.controlplane.roles (shared with
# `make run-cluster`) ---------------------------------------------------------------------------


def operator_env(
    k8s_cluster: ClusterHandle, dsn: str, gateway_url: str, redis_url: str | None = None
) -> dict[str, str]:
    autoscaling = (
        # The gateways' Valkey (demand per pool); sampled often so tests take seconds.
        {"TOLLGATE_REDIS_URL": redis_url, "TOLLGATE_AUTOSCALE_INTERVAL_SECONDS": "0.5"}
        if redis_url
        else {}
    )
    return {
        **autoscaling,
        "KUBECONFIG": str(k8s_cluster.kubeconfig),
        "POSTGRES_DSN": dsn,
        "TOLLGATE_KEY_PEPPER": PEPPER,
        "TOLLGATE_GATEWAY_URL": gateway_url,
        # No cluster DNS here: gateways reach a pool at its Service's ClusterIP.
        "TOLLGATE_BACKEND_URL_TEMPLATE": "http://{cluster_ip}:{port}",
        "TOLLGATE_APIKEY_RESYNC_SECONDS": RESYNC_SECONDS,
        "TOLLGATE_POOL_RESYNC_SECONDS": RESYNC_SECONDS,
        "TOLLGATE_ALIAS_RESYNC_SECONDS": RESYNC_SECONDS,
        "TOLLGATE_PROGRESS_INTERVAL_SECONDS": "0.2",
        "TOLLGATE_LEASE_DURATION_SECONDS": "3",
        "TOLLGATE_LEASE_NAMESPACE": "default",
        "TOLLGATE_LOG_JSON": "true",
        # The local OCI registry of the real-Ollama pull test speaks plain HTTP.
        "TOLLGATE_INSECURE_REGISTRIES": "127.0.0.1:*",
    }


# -- talking to the API server ---------------------------------------------------------------


@dataclass
class Kube:
    """Small helpers over the kubernetes client for our custom resources."""

    api: client.ApiClient

    @property
    def objects(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        plural = PLURALS[body["kind"]]
        namespace = body["metadata"]["namespace"]
        result: dict[str, Any] = self.objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, body
        )
        return result

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.objects.get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
        return result

    def patch(self, plural: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, {"spec": spec}
        )

    def delete(self, plural: str, namespace: str, name: str) -> None:
        self.objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)

    def gone(self, plural: str, namespace: str, name: str) -> bool:
        try:
            self.get(plural, namespace, name)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    def condition(self, obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") == type_:
                return dict(cond)
        return None

    def ready(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object once Ready=True and its status reflects the current generation."""
        obj = self.get(plural, namespace, name)
        cond = self.condition(obj, "Ready")
        status = obj.get("status") or {}
        if (
            cond
            and cond["status"] == "True"
            and status.get("observedGeneration") == obj["metadata"]["generation"]
        ):
            return obj
        return None

    def secret(self, namespace: str, name: str) -> dict[str, str] | None:
        import base64

        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


PLURALS = {"ApiKey": "apikeys", "ModelAlias": "modelaliases", "OllamaPool": "ollamapools"}
