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

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import psycopg
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tollgate_dev.plugins.cluster import ClusterHandle
from tollgate_dev.proc import ServiceError, free_port, stop_process, wait_http
from tollgate_dev.servers.programs import StandinProcess

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
SAMPLES = REPO / "manifests" / "samples"
GROUP, VERSION = "tollgate.dev", "v1alpha1"
POOL_LABEL = "tollgate.dev/pool"
OLLAMA_PORT = 11434
PEPPER = "operator-test-pepper"
STORAGE_CLASS = "fake-local"
PROVISIONER = "tollgate.dev/fake-local"
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


# -- what the local control plane lacks ------------------------------------------------------


class _Forwarder:
    """kube-proxy for one Service: TCP from ClusterIP:port to the ready Pods, round robin."""

    def __init__(self, server: asyncio.Server) -> None:
        self.server = server
        self.targets: list[str] = []
        self._turn = itertools.count()

    def pick(self) -> str | None:
        if not self.targets:
            return None
        return self.targets[next(self._turn) % len(self.targets)]


class _Runtime(Protocol):
    def stop(self) -> Any: ...


class FakeCluster:
    """A provisioner, a container runtime (the Ollama stand-in) and kube-proxy, for pools."""

    def __init__(self, api: client.ApiClient, logs: Path, standin_extra: list[str]) -> None:
        self.core = client.CoreV1Api(api)
        self.volumes: set[str] = set()
        self.logs = logs
        self.standin_extra = standin_extra
        self.standins: dict[str, _Runtime] = {}  # pod uid -> what plays its Ollama
        # Pools whose Pods run something else than the stand-in (e.g. a real Ollama):
        # pool name -> a function starting it on a Pod IP.
        self.runtimes: dict[str, Callable[[str], _Runtime]] = {}
        self.starting: set[str] = set()
        self.forwarders: dict[tuple[str, str, str], _Forwarder] = {}  # (namespace, service, ip)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._ensure_storage_class()
        self._loop_thread.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for proc in list(self.standins.values()):
            proc.stop()

        async def close() -> None:
            for forwarder in self.forwarders.values():
                forwarder.server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(10)
        self._loop.close()

    def standin_for(self, pod_ip: str) -> str:
        return f"http://{pod_ip}:{OLLAMA_PORT}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._provision()
                self._run_pods()
                self._proxy()
            except Exception as exc:  # keep playing the cluster; tests show the outcome
                print(f"fake cluster: {exc!r}", file=sys.stderr)
            self._stop.wait(0.25)

    def _ensure_storage_class(self) -> None:
        """The default StorageClass, bound when the scheduler picks a node (as local-path
        provisioners do), so a Pod never waits for a claim the scheduler gave up on."""
        storage = client.StorageV1Api(self.core.api_client)
        with contextlib.suppress(ApiException):  # 409: already there
            storage.create_storage_class(
                client.V1StorageClass(
                    metadata=client.V1ObjectMeta(
                        name=STORAGE_CLASS,
                        annotations={"storageclass.kubernetes.io/is-default-class": "true"},
                    ),
                    provisioner=PROVISIONER,
                    volume_binding_mode="WaitForFirstConsumer",
                    reclaim_policy="Delete",
                )
            )

    def _provision(self) -> None:
        """A volume for each claim of our class once the scheduler has chosen its node."""
        for claim in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            annotations = claim.metadata.annotations or {}
            if claim.spec.storage_class_name != STORAGE_CLASS or claim.spec.volume_name:
                continue
            if "volume.kubernetes.io/selected-node" not in annotations:
                continue
            if claim.metadata.uid in self.volumes:
                continue
            name = f"pv-{claim.metadata.uid}"
            volume = client.V1PersistentVolume(
                metadata=client.V1ObjectMeta(
                    name=name, annotations={"pv.kubernetes.io/provisioned-by": PROVISIONER}
                ),
                spec=client.V1PersistentVolumeSpec(
                    capacity={"storage": claim.spec.resources.requests["storage"]},
                    access_modes=claim.spec.access_modes,
                    storage_class_name=claim.spec.storage_class_name,
                    persistent_volume_reclaim_policy="Delete",
                    host_path=client.V1HostPathVolumeSource(path=f"/tmp/pv/{name}"),
                    claim_ref=client.V1ObjectReference(
                        namespace=claim.metadata.namespace,
                        name=claim.metadata.name,
                        uid=claim.metadata.uid,
                    ),
                ),
            )
            with contextlib.suppress(ApiException):  # 409: made on an earlier round
                self.core.create_persistent_volume(volume)
            self.volumes.add(claim.metadata.uid)

    def _run_pods(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(label_selector=POOL_LABEL).items
        alive = set()
        for pod in pods:
            uid, ip = pod.metadata.uid, pod.status.pod_ip
            if pod.status.phase != "Running" or not ip or pod.metadata.deletion_timestamp:
                continue
            alive.add(uid)
            with self._lock:
                if uid in self.standins or uid in self.starting:
                    continue
                self.starting.add(uid)
            pool = (pod.metadata.labels or {}).get(POOL_LABEL, "")
            threading.Thread(target=self._start_standin, args=(uid, ip, pool), daemon=True).start()
        for uid in set(self.standins) - alive:
            proc = self.standins.pop(uid)
            proc.stop()

    def _start_standin(self, uid: str, ip: str, pool: str) -> None:
        runtime: _Runtime
        try:
            if pool in self.runtimes:
                runtime = self.runtimes[pool](ip)
            else:
                standin = StandinProcess(
                    host=ip,
                    port=OLLAMA_PORT,
                    models="",
                    extra=self.standin_extra,
                    log_path=self.logs / f"standin-{ip}.log",
                )
                try:
                    standin.start()
                except (ServiceError, OSError):
                    standin.stop()
                    raise
                runtime = standin
            with self._lock:
                self.standins[uid] = runtime
        except (ServiceError, OSError, RuntimeError) as exc:
            print(f"fake cluster: Ollama on {ip} did not start: {exc}", file=sys.stderr)
        finally:
            with self._lock:
                self.starting.discard(uid)

    def _proxy(self) -> None:
        services = self.core.list_service_for_all_namespaces(label_selector=POOL_LABEL).items
        pods = self.core.list_pod_for_all_namespaces(label_selector=POOL_LABEL).items
        seen = set()
        for service in services:
            ip = service.spec.cluster_ip
            if not ip or ip == "None":
                continue
            # Keyed by address too: a Service deleted and made again gets a new ClusterIP.
            key = (service.metadata.namespace, service.metadata.name, ip)
            pool = service.spec.selector.get(POOL_LABEL)
            targets = sorted(
                p.status.pod_ip
                for p in pods
                if p.metadata.namespace == key[0]
                and (p.metadata.labels or {}).get(POOL_LABEL) == pool
                and p.status.pod_ip
                and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            )
            if key not in self.forwarders:
                self.forwarders[key] = asyncio.run_coroutine_threadsafe(
                    self._listen(ip), self._loop
                ).result(10)
            self.forwarders[key].targets = targets
            seen.add(key)
        for key in set(self.forwarders) - seen:  # the Service is gone: so is its address
            self._loop.call_soon_threadsafe(self.forwarders.pop(key).server.close)

    async def _listen(self, ip: str) -> _Forwarder:
        holder: list[_Forwarder] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            target = holder[0].pick()
            if target is None:
                writer.close()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(target, OLLAMA_PORT)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

        server = await asyncio.start_server(handle, ip, OLLAMA_PORT)
        holder.append(_Forwarder(server))
        return holder[0]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()


def operator_env(k8s_cluster: ClusterHandle, dsn: str, gateway_url: str) -> dict[str, str]:
    return {
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
