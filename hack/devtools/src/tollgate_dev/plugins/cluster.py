"""pytest plugin: a real local Kubernetes control plane for the whole session.

Register it with ``pytest_plugins = ["tollgate_dev.plugins.cluster"]`` and ask
for the ``k8s_cluster`` fixture. The first test that needs it starts etcd,
kube-apiserver, controller-manager, scheduler and kwok (see
:mod:`tollgate_dev.controlplane.cluster`) in a private state folder with its own ports and
pod IP range; the last one to finish stops every process it started, even when
tests fail or the run is interrupted (fixture finalizer, ``atexit``, and each
child asks Linux to end it when pytest exits).

With ``TOLLGATE_KUBECONFIG`` set, the fixture uses that cluster instead (for
example one from ``make cluster-up``) and starts nothing.

If the binaries are missing or the cluster cannot start, the fixture fails the
test: nothing is skipped.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from kubernetes import client, config

from tollgate_dev.controlplane.binaries import Binaries, BinariesMissingError
from tollgate_dev.controlplane.cluster import ClusterError, FakeNode, LocalCluster, bin_dir
from tollgate_dev.proc import repo_root

REUSE_ENV = "TOLLGATE_KUBECONFIG"
KEEP_ENV = "TOLLGATE_KEEP_CLUSTER_STATE"


@dataclass(frozen=True)
class ClusterHandle:
    """What a test gets: where the cluster is and clients for it."""

    kubeconfig: Path
    bin_dir: Path
    pod_cidr: str | None
    """The loopback range pod IPs come from (None for a reused cluster)."""
    cluster: LocalCluster | None
    """The cluster this session started (None for a reused cluster)."""

    def api_client(self) -> client.ApiClient:
        """A new kubernetes-client ApiClient for the admin kubeconfig (close it when done)."""
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        return cast(client.ApiClient, api)

    def core_v1(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client())

    def apps_v1(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api_client())

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster (a failure says what kubectl said)."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def wait_established(self, *crds: str, timeout: float = 180) -> None:
        """Until every CRD (``crd/<name>``) is Established: polled, so that an API server
        slow under load, or a watch that ends early, only costs time."""
        deadline = time.monotonic() + timeout
        path = '{.status.conditions[?(@.type=="Established")].status}'
        pending = list(crds)
        last = ""
        while pending:
            result = self.kubectl("get", pending[0], "-o", f"jsonpath={path}", check=False)
            if result.returncode == 0 and result.stdout.strip() == "True":
                pending.pop(0)
                continue
            last = (result.stderr or result.stdout).strip()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pending[0]} not Established in {timeout:g} s: {last!r}")
            time.sleep(0.5)


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


def _pod_cidr_for_session() -> str:
    """A /16 inside 127/8 of this session's own, so parallel sessions' pod IPs differ."""
    return f"127.{20 + os.getpid() % 70}.0.0/16"


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[ClusterHandle]:
    """A running local control plane with one fake GPU node (nvidia.com/gpu: 4)."""
    if reuse := os.environ.get(REUSE_ENV):
        kubeconfig = Path(reuse).resolve()
        if not kubeconfig.is_file():
            pytest.fail(f"{REUSE_ENV}={reuse} is not a file", pytrace=False)
        yield ClusterHandle(kubeconfig, bin_dir(Binaries.resolve()), None, None)
        return

    sessions = repo_root() / ".state" / "pytest-cluster"
    _remove_stale_sessions(sessions)
    state = sessions / str(os.getpid())
    pod_cidr = _pod_cidr_for_session()
    cluster = LocalCluster(
        state,
        nodes=[FakeNode("tollgate-gpu-0", gpus=4)],
        pod_cidr=pod_cidr,
        die_with_parent=True,
    )

    def stop() -> None:
        cluster.stop(remove_state=not os.environ.get(KEEP_ENV))

    atexit.register(stop)
    failure: str | None = None
    try:
        cluster.start()
    except (ClusterError, BinariesMissingError, OSError) as exc:
        atexit.unregister(stop)
        cluster.stop()  # every process; the logs stay for a look
        failure = f"the local Kubernetes control plane did not start: {exc}"
        if cluster.logs_dir.is_dir():
            failure += f"\n(logs in {cluster.logs_dir})"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    try:
        yield ClusterHandle(cluster.kubeconfig, cluster.bin_dir, pod_cidr, cluster)
    finally:
        stop()
        atexit.unregister(stop)
        with contextlib.suppress(OSError):
            sessions.rmdir()  # only if no other session is using it


def _remove_stale_sessions(sessions: Path) -> None:
    """Clean up after sessions that were killed outright (their pid is gone)."""
    if not sessions.is_dir():
        return
    for folder in sessions.iterdir():
        if folder.name.isdigit() and not Path(f"/proc/{folder.name}").exists():
            LocalCluster(folder).stop(remove_state=True)
