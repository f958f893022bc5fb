"""A real, local Kubernetes control plane on loopback, for tests and local runs.

``python -m tollgate_dev.controlplane.cluster up|down|env|status`` (or ``make cluster-up``…)
starts, from the binaries that ``hack/build-k8s.sh`` builds:

* etcd;
* kube-apiserver, with certificates, service-account keys and kubeconfigs
  generated here (RBAC + Node authorization, the default admission plugins);
* kube-controller-manager (all default controllers: StatefulSets create Pods,
  the garbage collector follows owner references, service accounts appear);
* kube-scheduler;
* kwok, which plays the kubelet for fake Nodes created here. Each fake node
  advertises ``nvidia.com/gpu`` capacity, so GPU pods schedule and go Running.
  Pod IPs come from a loopback range (127.10.0.0/16 by default; Linux routes
  all of 127/8 to ``lo``), so a test can start a real process listening on a
  Pod's IP and reach it.

Everything lives in one state folder (``.state/cluster`` in the repository by
default, or ``$TOLLGATE_CLUSTER_DIR``, or ``--state-dir``): certificates, etcd
data, logs, pid files and the admin kubeconfig. Every process runs in its own
process group; ``down`` stops each group it started and removes etcd's data.

The same machinery is a Python API: :class:`LocalCluster` (a context manager),
used by the pytest plugin :mod:`tollgate_dev.plugins.cluster`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import functools
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tollgate_dev.controlplane.binaries import Binaries, BinariesMissingError
from tollgate_dev.proc import Running, cache_root, free_port, repo_root, spawning

__all__ = [
    "DEFAULT_POD_CIDR",
    "FAKE_NODE_ANNOTATION",
    "ClusterError",
    "FakeNode",
    "LocalCluster",
    "default_state_dir",
    "main",
]

STATE_DIR_ENV = "TOLLGATE_CLUSTER_DIR"
DEFAULT_POD_CIDR = "127.10.0.0/16"
# ClusterIPs are virtual (there is no kube-proxy); keeping them on loopback means
# a stray connection to one can never leave the machine.
DEFAULT_SERVICE_CIDR = "127.96.0.0/16"
# kwok manages exactly the nodes carrying this annotation.
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
# Order matters: start in this order, stop in the reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

Log = Callable[[str], None]


class ClusterError(RuntimeError):
    """The local cluster could not be started or reached."""


def default_state_dir() -> Path:
    """``$TOLLGATE_CLUSTER_DIR``, else ``<repo>/.state/cluster``."""
    if explicit := os.environ.get(STATE_DIR_ENV):
        return Path(explicit).resolve()
    return repo_root() / ".state" / "cluster"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class _Pki:
    """Paths of the generated certificates and keys."""

    folder: Path

    def crt(self, name: str) -> Path:
        return self.folder / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    @property
    def sa_key(self) -> Path:
        return self.folder / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.folder / "sa.pub"


# Client identities: file name -> (common name, organisation or None).
_CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("tollgate-admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", None),
    "kube-scheduler": ("system:kube-scheduler", None),
    # kwok writes node and pod status and node leases for many nodes.
    "kwok": ("kwok-controller", "system:masters"),
}


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _new_cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usages: Sequence[x509.ObjectIdentifier] = (),
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=3650 if ca else 365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _name(common_name: str, organisation: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    return x509.Name(attrs)


def _generate_pki(pki: _Pki, service_ip: str) -> None:
    """Create the CA, serving and client certificates and service-account keys once."""
    expected = [pki.crt(name) for name in ("ca", "apiserver", "front-proxy-client", *_CLIENTS)]
    if pki.sa_pub.exists() and all(path.exists() for path in expected):
        return
    pki.folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _new_cert(_name("tollgate-local-ca"), ca_key, None, ca=True)
    _write_key(pki.key("ca"), ca_key)
    pki.crt("ca").write_bytes(ca_cert.public_bytes(pem))

    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(service_ip)),
    ]
    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving = _new_cert(
        _name("kube-apiserver"),
        serving_key,
        (ca_cert, ca_key),
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=sans,
    )
    _write_key(pki.key("apiserver"), serving_key)
    pki.crt("apiserver").write_bytes(serving.public_bytes(pem))

    for file_name, (common_name, organisation) in _CLIENTS.items():
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = _new_cert(
            _name(common_name, organisation),
            client_key,
            (ca_cert, ca_key),
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        _write_key(pki.key(file_name), client_key)
        pki.crt(file_name).write_bytes(client.public_bytes(pem))

    # The aggregation layer's own CA and the client certificate the API server
    # presents to extension API servers (as kubeadm sets them up).
    proxy_ca_key = ec.generate_private_key(ec.SECP256R1())
    proxy_ca = _new_cert(_name("tollgate-front-proxy-ca"), proxy_ca_key, None, ca=True)
    _write_key(pki.key("front-proxy-ca"), proxy_ca_key)
    pki.crt("front-proxy-ca").write_bytes(proxy_ca.public_bytes(pem))
    proxy_key = ec.generate_private_key(ec.SECP256R1())
    proxy_client = _new_cert(
        _name("front-proxy-client"),
        proxy_key,
        (proxy_ca, proxy_ca_key),
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    _write_key(pki.key("front-proxy-client"), proxy_key)
    pki.crt("front-proxy-client").write_bytes(proxy_client.public_bytes(pem))

    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _kubeconfig(server: str, pki: _Pki, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tollgate-local",
                "cluster": {"server": server, "certificate-authority": str(pki.crt("ca"))},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki.crt(user)),
                    "client-key": str(pki.key(user)),
                },
            }
        ],
        "contexts": [
            {"name": "tollgate-local", "context": {"cluster": "tollgate-local", "user": user}}
        ],
        "current-context": "tollgate-local",
    }


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:  # pragma: no cover - runs in the child after fork
    """Ask Linux to SIGKILL this child when the process that started it dies.

    SIGKILL, not SIGTERM: a component still starting up, or one whose etcd has
    just gone, can hang in a graceful shutdown that never finishes.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _cmdline(pid: int) -> list[str] | None:
    """A live process's argv, or None if it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


@dataclass
class _Pid:
    """What a pid file records: enough to stop the right process and nothing else."""

    pid: int
    binary: str

    def alive(self) -> bool:
        argv = _cmdline(self.pid)
        if argv is None:
            return False
        return argv[0] == self.binary

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it does not exit in time."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(self.pid)
            if not self.alive():
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for _ in range(50):
            _reap(self.pid)
            if not self.alive():
                return
            time.sleep(0.1)


def _reap(pid: int) -> None:
    """Collect an exited child of ours so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --------------------------------------------------------------------------- the cluster


@dataclass(frozen=True)
class FakeNode:
    """A kwok-managed Node: schedulable, Ready, with GPUs to hand out."""

    name: str
    gpus: int = 4
    cpu: str = "32"
    memory: str = "256Gi"
    pods: int = 110


@dataclass
class _Settings:
    """What a running cluster was started with (state/cluster.json)."""

    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    controller_manager_port: int
    scheduler_port: int
    pod_cidr: str
    service_cidr: str
    node_names: list[str] = field(default_factory=list)

    @classmethod
    def fresh(cls, pod_cidr: str, service_cidr: str) -> _Settings:
        ports: set[int] = set()
        while len(ports) < 5:
            ports.add(free_port())
        etcd, peer, api, kcm, sched = sorted(ports)
        return cls(etcd, peer, api, kcm, sched, pod_cidr, service_cidr)


class LocalCluster(Running):
    """etcd + kube-apiserver + controller-manager + scheduler + kwok on loopback.

    ``start()`` is idempotent: components already running from the same state
    folder are kept. ``stop()`` ends every process started from that folder
    (each in its own process group) and removes etcd's data.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        nodes: Sequence[FakeNode] = (FakeNode("tollgate-gpu-0"),),
        pod_cidr: str = DEFAULT_POD_CIDR,
        service_cidr: str = DEFAULT_SERVICE_CIDR,
        binaries: Binaries | None = None,
        die_with_parent: bool = False,
        log: Log = _stderr,
    ) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.nodes = list(nodes)
        self.pod_cidr = pod_cidr
        self.service_cidr = service_cidr
        self.binaries = binaries or Binaries.resolve()
        self.die_with_parent = die_with_parent
        self.log = log
        self.pki = _Pki(self.state_dir / "pki")
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.api_ready_seconds: float | None = None
        """Seconds from ``start()`` to /readyz ok (None if it was already up)."""
        self.ready_seconds: float | None = None
        """Seconds from ``start()`` to the whole cluster ready (nodes Ready)."""

    # -- paths -------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (cluster-admin via a system:masters client certificate)."""
        return self.state_dir / "kubeconfig"

    @property
    def bin_dir(self) -> Path:
        """A folder of symlinks to every pinned binary (kubectl, helm, …), for PATH."""
        return bin_dir(self.binaries)

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self._settings().apiserver_port}"

    def _pid_file(self, component: str) -> Path:
        return self.state_dir / "pids" / f"{component}.json"

    def _settings_file(self) -> Path:
        return self.state_dir / "cluster.json"

    def _settings(self) -> _Settings:
        try:
            raw = json.loads(self._settings_file().read_text())
        except FileNotFoundError as exc:
            msg = f"no cluster state in {self.state_dir}"
            raise ClusterError(msg) from exc
        return _Settings(**raw)

    # -- status ------------------------------------------------------------------------

    def _pid(self, component: str) -> _Pid | None:
        try:
            raw = json.loads(self._pid_file(component).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return _Pid(**raw)

    def component_status(self) -> dict[str, int | None]:
        """Each component's pid if it is running, else None."""
        status: dict[str, int | None] = {}
        for component in COMPONENTS:
            pid = self._pid(component)
            status[component] = pid.pid if pid and pid.alive() else None
        return status

    def api_ready(self) -> bool:
        """True when kube-apiserver answers /readyz with ok."""
        try:
            return self._get("/readyz", timeout=3).strip() == "ok"
        except (OSError, ClusterError, ssl.SSLError):
            return False

    def running(self) -> bool:
        """Every component is running and the API server is ready."""
        return all(self.component_status().values()) and self.api_ready()

    # -- start -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start whatever is not running yet; wait until the cluster is usable."""
        self.binaries.require()
        began = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "pids"):
            (self.state_dir / sub).mkdir(exist_ok=True)
        status = self.component_status()
        if not (status["etcd"] and status["kube-apiserver"] and self.api_ready()):
            # The storage or the API server is gone: start everything afresh.
            self._stop_processes()
            shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
            settings = _Settings.fresh(self.pod_cidr, self.service_cidr)
            self._settings_file().write_text(json.dumps(asdict(settings), indent=2) + "\n")
            status = dict.fromkeys(COMPONENTS)
        settings = self._settings()
        service_ip = str(next(ipaddress.ip_network(settings.service_cidr).hosts()))
        _generate_pki(self.pki, service_ip)
        self._write_kubeconfigs(settings)
        self._write_kwok_config()

        if not status["etcd"]:
            self._launch("etcd", self._etcd_args(settings))
            self._wait("etcd", functools.partial(self._etcd_healthy, settings), timeout=60)
        if not status["kube-apiserver"]:
            self._launch("kube-apiserver", self._apiserver_args(settings))
            self._wait("kube-apiserver", self.api_ready, timeout=120)
            self.api_ready_seconds = time.monotonic() - began
            self.log(
                f"cluster: API server ready (/readyz ok) {self.api_ready_seconds:.1f}s after start"
            )
        if not status["kube-controller-manager"]:
            self._launch("kube-controller-manager", self._controller_manager_args(settings))
        if not status["kube-scheduler"]:
            self._launch("kube-scheduler", self._scheduler_args(settings))
        if not status["kwok"]:
            self._launch("kwok", self._kwok_args(settings), env={"HOME": str(self.state_dir)})
        self._ensure_nodes(settings)
        self._wait("the fake nodes", self._nodes_ready, timeout=120)
        self._wait("the default service account", self._default_sa_exists, timeout=120)
        for component, port in (
            ("kube-controller-manager", settings.controller_manager_port),
            ("kube-scheduler", settings.scheduler_port),
        ):
            self._wait(component, functools.partial(self._component_healthy, port), timeout=60)
        bin_dir(self.binaries)  # create the symlinks now, so `env` output is valid
        self.ready_seconds = time.monotonic() - began
        return self

    def _launch(self, component: str, args: list[str], env: dict[str, str] | None = None) -> None:
        binary = {
            "etcd": self.binaries.etcd,
            "kube-apiserver": self.binaries.kube_apiserver,
            "kube-controller-manager": self.binaries.kube_controller_manager,
            "kube-scheduler": self.binaries.kube_scheduler,
            "kwok": self.binaries.kwok,
        }[component]
        log_path = self.logs_dir / f"{component}.log"
        with log_path.open("ab") as log_file:
            log_file.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting\n".encode())
            log_file.flush()
            with spawning():
                proc = subprocess.Popen(
                    [str(binary), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=self.state_dir,
                    env={**os.environ, **(env or {})},
                    start_new_session=True,  # its own process group, stopped as one
                    preexec_fn=_die_with_parent if self.die_with_parent else None,
                )
                # recorded before a held-back signal acts: `stop` finds it by its pid file
                pid = _Pid(proc.pid, str(binary))
                self._pid_file(component).write_text(json.dumps(asdict(pid)) + "\n")
                self._procs[component] = proc

    def _wait(self, what: str, ready: Callable[[], bool], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for component, proc in self._procs.items():
                if proc.poll() is not None:
                    msg = (
                        f"{component} exited with status {proc.returncode} while waiting for "
                        f"{what}\n{self.log_tail(component)}"
                    )
                    raise ClusterError(msg)
            time.sleep(0.2)
        msg = f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.logs_dir}"
        raise ClusterError(msg)

    def log_tail(self, component: str, lines: int = 30) -> str:
        """The last lines of a component's log, for error messages."""
        try:
            text = (self.logs_dir / f"{component}.log").read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log for {component})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {self.logs_dir / component}.log:\n{tail}"

    # -- component arguments ------------------------------------------------------------

    def _etcd_args(self, s: _Settings) -> list[str]:
        client = f"http://127.0.0.1:{s.etcd_port}"
        peer = f"http://127.0.0.1:{s.etcd_peer_port}"
        return [
            "--name=tollgate",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=tollgate={peer}",
            "--initial-cluster-state=new",
            # A throwaway test store: skip fsync, as envtest and kind do.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _apiserver_args(self, s: _Settings) -> list[str]:
        pki = self.pki
        # The flag set of controller-runtime's envtest, plus a real authorizer,
        # the default admission plugins (ServiceAccount included: the
        # controller-manager creates the accounts) and service-account signing.
        return [
            "--advertise-address=127.0.0.1",
            "--bind-address=127.0.0.1",
            f"--secure-port={s.apiserver_port}",
            f"--etcd-servers=http://127.0.0.1:{s.etcd_port}",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.crt('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.crt('ca')}",
            f"--requestheader-client-ca-file={pki.crt('front-proxy-ca')}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.crt('front-proxy-client')}",
            f"--proxy-client-key-file={pki.key('front-proxy-client')}",
            f"--service-cluster-ip-range={s.service_cidr}",
            "--allow-privileged=true",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            # The API server's own Endpoints would hold 127.0.0.1, which the
            # Endpoints API refuses (loopback); nothing in-cluster needs them.
            "--endpoint-reconciler-type=none",
            "--storage-backend=etcd3",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_args(self, s: _Settings) -> list[str]:
        kubeconfig = self.state_dir / "kube-controller-manager.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={s.controller_manager_port}",
            f"--cert-dir={self.state_dir / 'kube-controller-manager-certs'}",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.crt('ca')}",
            f"--cluster-signing-cert-file={self.pki.crt('ca')}",
            f"--cluster-signing-key-file={self.pki.key('ca')}",
            f"--service-cluster-ip-range={s.service_cidr}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]

    def _scheduler_args(self, s: _Settings) -> list[str]:
        kubeconfig = self.state_dir / "kube-scheduler.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={s.scheduler_port}",
            f"--cert-dir={self.state_dir / 'kube-scheduler-certs'}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]

    def _kwok_args(self, s: _Settings) -> list[str]:
        key, value = FAKE_NODE_ANNOTATION
        return [
            f"--kubeconfig={self.state_dir / 'kwok.kubeconfig'}",
            f"--config={self.state_dir / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            "--node-lease-duration-seconds=40",
            f"--cidr={s.pod_cidr}",
            "--node-ip=127.0.0.1",
        ]

    # -- files ---------------------------------------------------------------------------

    def _write_kubeconfigs(self, s: _Settings) -> None:
        server = f"https://127.0.0.1:{s.apiserver_port}"
        targets = {
            "admin": self.kubeconfig,
            "kube-controller-manager": self.state_dir / "kube-controller-manager.kubeconfig",
            "kube-scheduler": self.state_dir / "kube-scheduler.kubeconfig",
            "kwok": self.state_dir / "kwok.kubeconfig",
        }
        for user, path in targets.items():
            path.write_text(yaml.safe_dump(_kubeconfig(server, self.pki, user), sort_keys=False))
            path.chmod(0o600)

    def _write_kwok_config(self) -> None:
        """The Stage objects that drive node and pod lifecycles (options are flags).

        A KwokConfiguration document would skip kwok's defaulting, so every
        option is passed as a flag instead.
        """
        documents = [p.read_text() for p in sorted(self.binaries.kwok_stages.glob("*.yaml"))]
        (self.state_dir / "kwok.yaml").write_text("---\n".join(documents))

    # -- readiness checks ----------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.crt("ca")))
        context.load_cert_chain(str(self.pki.crt("admin")), str(self.pki.key("admin")))
        return context

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float = 10
    ) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - https to our own API server
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=timeout, context=self._ssl_context()
            ) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def _get(self, path: str, *, timeout: float = 10) -> str:
        status, text = self._request("GET", path, timeout=timeout)
        if status != 200:
            msg = f"GET {path}: HTTP {status}: {text[:500]}"
            raise ClusterError(msg)
        return text

    def _etcd_healthy(self, s: _Settings) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{s.etcd_port}/health", timeout=2
            ) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    @staticmethod
    def _component_healthy(port: int) -> bool:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # self-signed serving cert; we only read "ok"
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/healthz", timeout=2, context=context
            ) as response:
                return bool(response.read().strip() == b"ok")
        except (OSError, ssl.SSLError):
            return False

    def _ensure_nodes(self, s: _Settings) -> None:
        network = ipaddress.ip_network(s.pod_cidr)
        subnets = network.subnets(new_prefix=max(network.prefixlen, 24))
        key, value = FAKE_NODE_ANNOTATION
        for node, subnet in zip(self.nodes, subnets, strict=False):
            status, _ = self._request("GET", f"/api/v1/nodes/{node.name}")
            if status == 200:
                continue
            capacity = {
                "cpu": node.cpu,
                "memory": node.memory,
                "pods": str(node.pods),
                GPU_RESOURCE: str(node.gpus),
            }
            manifest = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node.name,
                    "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": node.name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                        "nvidia.com/gpu.present": "true",
                        "nvidia.com/gpu.count": str(node.gpus),
                    },
                },
                "spec": {"podCIDR": str(subnet), "podCIDRs": [str(subnet)]},
                "status": {"capacity": capacity, "allocatable": capacity},
            }
            status, text = self._request("POST", "/api/v1/nodes", manifest)
            if status not in (200, 201, 409):
                msg = f"creating node {node.name}: HTTP {status}: {text[:500]}"
                raise ClusterError(msg)
        s.node_names = [node.name for node in self.nodes]
        self._settings_file().write_text(json.dumps(asdict(s), indent=2) + "\n")

    def _nodes_ready(self) -> bool:
        for node in self.nodes:
            status, text = self._request("GET", f"/api/v1/nodes/{node.name}")
            if status != 200:
                return False
            conditions = json.loads(text).get("status", {}).get("conditions", [])
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return False
        return True

    def _default_sa_exists(self) -> bool:
        status, _ = self._request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    # -- stop ----------------------------------------------------------------------------

    def _stop_processes(self) -> None:
        for component in reversed(COMPONENTS):
            pid = self._pid(component)
            if pid is not None:
                pid.stop()
                self._pid_file(component).unlink(missing_ok=True)
        for proc in self._procs.values():
            with contextlib.suppress(OSError):
                proc.wait(timeout=1)
        self._procs.clear()

    def stop(self, *, remove_state: bool = False) -> None:
        """Stop every process started from this state folder and remove etcd's data.

        With ``remove_state`` the whole state folder goes (certificates, logs…).
        """
        self._stop_processes()
        shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
        self._settings_file().unlink(missing_ok=True)
        if remove_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def bin_dir(binaries: Binaries) -> Path:
    """A cache folder of symlinks to the pinned binaries, one per version set."""
    digest = hashlib.sha256(
        "\n".join(str(path) for path in binaries.executables()).encode()
    ).hexdigest()[:12]
    return binaries.link_into(cache_root() / "k8s" / f"bin-{digest}")


# --------------------------------------------------------------------------- command line


def _env_lines(cluster: LocalCluster) -> Iterator[str]:
    yield f"export KUBECONFIG={cluster.kubeconfig}"
    yield f'export PATH={cluster.bin_dir}:"$PATH"'


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tollgate_dev.controlplane.cluster",
        description="A local Kubernetes control plane (etcd, kube-apiserver, "
        "controller-manager, scheduler, kwok) on loopback.",
    )
    parser.add_argument(
        "command",
        choices=["up", "down", "env", "status"],
        help="up: start (idempotent); down: stop and remove etcd data; "
        "env: print export lines for KUBECONFIG and PATH; status: what is running",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"state folder (default: ${STATE_DIR_ENV} or <repo>/.state/cluster)",
    )
    parser.add_argument(
        "--gpu-nodes", type=int, default=1, help="number of fake GPU nodes (default 1)"
    )
    parser.add_argument("--gpus", type=int, default=4, help="nvidia.com/gpu per node (default 4)")
    parser.add_argument("--pod-cidr", default=DEFAULT_POD_CIDR, help="loopback range for pod IPs")
    args = parser.parse_args(argv)

    nodes = [FakeNode(f"tollgate-gpu-{i}", gpus=args.gpus) for i in range(args.gpu_nodes)]
    cluster = LocalCluster(args.state_dir, nodes=nodes, pod_cidr=args.pod_cidr)
    try:
        if args.command == "up":
            was_running = cluster.running()
            try:
                cluster.start()
            except ClusterError:
                cluster.stop()  # leave nothing half-started; the logs stay
                raise
            if was_running:
                _stderr(f"cluster: already running ({cluster.server})")
            else:
                _stderr(f"cluster: ready in {cluster.ready_seconds:.1f}s at {cluster.server}")
            _stderr('cluster: use it with  eval "$(make -s cluster-env)"')
        elif args.command == "down":
            cluster.stop()
            _stderr("cluster: stopped")
        elif args.command == "env":
            for line in _env_lines(cluster):
                print(line)
        else:
            for component, pid in cluster.component_status().items():
                print(f"{component:24} {'running, pid ' + str(pid) if pid else 'stopped'}")
            ready = cluster.api_ready()
            print(f"{'api server /readyz':24} {'ok' if ready else 'not ready'}")
            print(f"{'kubeconfig':24} {cluster.kubeconfig}")
            return 0 if ready else 1
    except (ClusterError, BinariesMissingError) as exc:
        _stderr(f"cluster: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
