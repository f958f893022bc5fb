"""What the local control plane lacks, played for the pools the operator creates.

The local control plane (kwok nodes) has no storage provisioner, no container runtime and no
kube-proxy. `FakeCluster` plays those parts, for the operator's tests and for
`make run-cluster` alike:

* a PersistentVolume pre-bound to each pending claim of a pool (the provisioner), through a
  default StorageClass bound when the scheduler picks a node;
* an Ollama on each running pool Pod's IP, port 11434 (the container the Pod would run):
  the stand-in by default, or what a runtime function starts (e.g. the real Ollama),
  stopped when the Pod goes away;
* a TCP forwarder on each pool Service's ClusterIP, port 11434, to the ready Pods
  (kube-proxy), so a gateway reaches a pool through its Service address.

Pod and Service addresses come from loopback ranges (see `cluster`), so all of them can be
listened on locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tollgate_dev.proc import ServiceError
from tollgate_dev.servers.programs import StandinProcess

POOL_LABEL = "tollgate.dev/pool"
OLLAMA_PORT = 11434
STORAGE_CLASS = "fake-local"
PROVISIONER = "tollgate.dev/fake-local"


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


class Runtime(Protocol):
    def stop(self) -> Any: ...


class FakeCluster:
    """A provisioner, a container runtime (the Ollama stand-in) and kube-proxy, for pools."""

    def __init__(
        self,
        api: client.ApiClient,
        logs: Path,
        standin_extra: list[str],
        default_runtime: Callable[[str], Runtime] | None = None,
    ) -> None:
        # Untyped on purpose: the client's models are Optional everywhere, and this reads only
        # what the API server always sets for the objects it lists.
        self.core: Any = client.CoreV1Api(api)
        # What plays the Ollama of pools not named in `runtimes` (None: the stand-in).
        self.default_runtime = default_runtime
        self.volumes: set[str] = set()
        self.logs = logs
        self.standin_extra = standin_extra
        self.standins: dict[str, Runtime] = {}  # pod uid -> what plays its Ollama
        # Pools whose Pods run something else than the stand-in (e.g. a real Ollama):
        # pool name -> a function starting it on a Pod IP.
        self.runtimes: dict[str, Callable[[str], Runtime]] = {}
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
                    host_path=client.V1HostPathVolumeSource(path=str(self.logs / "pv" / name)),
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
        runtime: Runtime
        try:
            if pool in self.runtimes:
                runtime = self.runtimes[pool](ip)
            elif self.default_runtime is not None:
                runtime = self.default_runtime(ip)
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
