"""`make run` (tollgate_dev.cli run --standin) under SIGINT and SIGTERM at each moment of its
start-up, with leftovers of an earlier run, and with its ports taken."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tollgate_dev.controlplane.cluster import LocalCluster
from tollgate_dev.proc import free_port

PHASES = [
    "starting PostgreSQL",
    "starting Valkey",
    "applying migrations",
    "starting the Ollama stand-in",
    "serving the gateway",
]
READY = "press Ctrl-C to stop"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class Run:
    """One `make run --standin`, its output collected line by line."""

    env: dict[str, str]
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] = field(init=False)
    lines: list[str] = field(default_factory=list)
    _seen: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tollgate_dev.cli", "run", "--standin", *self.extra],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # as a shell starts a background job (`make run &`): SIGINT ignored on entry
            preexec_fn=_ignore_sigint,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._seen:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._seen.notify_all()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with self._seen:
            while not any(text in line for line in self.lines):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"never printed {text!r}:\n" + "\n".join(self.lines))
                self._seen.wait(0.1)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def ours(state: Path) -> list[tuple[int, str]]:
    """Processes started for this state folder (they inherit TOLLGATE_STATE_DIR)."""
    marker = b"TOLLGATE_STATE_DIR=" + str(state).encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if (proc / "stat").read_text().split(") ", 1)[1][0] != "Z":
                    found.append((int(proc.name), cmd))
        except OSError:
            continue
    return found


PORTS = (
    "TOLLGATE_PORT",
    "TOLLGATE_METRICS_PORT",
    "TOLLGATE_DEV_POSTGRES_PORT",
    "TOLLGATE_DEV_REDIS_PORT",
    "TOLLGATE_DEV_STANDIN_PORT",
)


def listening(env: dict[str, str]) -> list[str]:
    """The run's ports someone still listens on (Valkey rewrites its environment away with
    its process title, so it is found by its port)."""
    return [name for name in PORTS if not port_free(int(env[name]))]


def assert_nothing_left(state: Path, env: dict[str, str]) -> None:
    deadline = time.monotonic() + 5
    while (ours(state) or listening(env)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ours(state) == [], ours(state)
    assert listening(env) == []


@pytest.fixture(scope="module")
def state() -> Iterator[Path]:
    # World-traversable: PostgreSQL runs as an unprivileged user when we are root.
    path = Path(tempfile.mkdtemp(prefix="tollgate-run-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    for pid in {pid for pid, _ in ours(path)} | in_folder(path):  # whatever a failure left
        os.kill(pid, signal.SIGKILL)


def in_folder(path: Path) -> set[int]:
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")).is_relative_to(path):
                found.add(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def env(state: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("POSTGRES_DSN", "REDIS_URL", "OLLAMA_BASE_URL", "ADMIN_PASSWORD")
    }
    env.update(
        TOLLGATE_STATE_DIR=str(state),
        TOLLGATE_PORT=str(free_port()),
        TOLLGATE_METRICS_PORT=str(free_port()),
        TOLLGATE_DEV_POSTGRES_PORT=str(free_port()),
        TOLLGATE_DEV_REDIS_PORT=str(free_port()),
        TOLLGATE_DEV_STANDIN_PORT=str(free_port()),
        TOLLGATE_DEV_OPERATOR_METRICS_PORT=str(free_port()),
        TOLLGATE_DEV_MODE="true",
    )
    return env


@pytest.mark.parametrize("phase", PHASES)
def test_sigint_during_each_start_up_phase_stops_everything(
    env: dict[str, str], state: Path, phase: str
) -> None:
    run = Run(env)
    run.wait_for(phase)
    run.signal(signal.SIGINT)
    assert run.wait() == 130, run.output
    assert "interrupted by SIGINT while starting" in run.output
    assert READY not in run.output
    assert_nothing_left(state, env)


def test_sigterm_during_start_up_three_times_then_a_start_works(
    env: dict[str, str], state: Path
) -> None:
    for phase in ("starting PostgreSQL", "applying migrations", "serving the gateway"):
        run = Run(env)
        run.wait_for(phase)
        run.signal(signal.SIGTERM)
        assert run.wait() == 143, run.output
        assert_nothing_left(state, env)
    run = Run(env)
    run.wait_for(READY)
    health = httpx.get(f"http://127.0.0.1:{env['TOLLGATE_PORT']}/healthz", timeout=10)
    assert health.status_code == 200
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.output
    assert_nothing_left(state, env)


def test_a_busy_port_is_reported_before_anything_starts(env: dict[str, str], state: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["TOLLGATE_PORT"])))
        squatter.listen()
        run = Run(env)
        assert run.wait() == 1, run.output
    assert f"port {env['TOLLGATE_PORT']} (the gateway) is in use by pid {os.getpid()}" in run.output
    assert f"kill {os.getpid()}" in run.output
    assert "starting PostgreSQL" not in run.output
    assert_nothing_left(state, env)


def test_leftovers_of_an_earlier_run_are_reported_or_reused(
    env: dict[str, str], state: Path
) -> None:
    crashed = Run(env)
    crashed.wait_for(READY)
    crashed.proc.kill()  # SIGKILL: no clean-up at all, every server stays behind
    crashed.wait()
    left = dict(ours(state))
    assert len(left) >= 3, left  # PostgreSQL (and its workers), the stand-in, the gateway
    assert listening(env) == list(PORTS)  # and Valkey

    blocked = Run(env)
    assert blocked.wait() == 1, blocked.output
    # the gateway and the stand-in hold their ports: named, with the command that stops them
    gateway_pid = next(pid for pid, cmd in left.items() if "tollgate_gateway.cli" in cmd)
    standin_pid = next(pid for pid, cmd in left.items() if "tollgate_standin" in cmd)
    assert f"in use by pid {gateway_pid}" in blocked.output
    assert f"kill {gateway_pid}" in blocked.output
    assert "earlier `make run`" in blocked.output
    assert "starting PostgreSQL" not in blocked.output
    assert set(dict(ours(state))) == set(left)  # nothing started, nothing stopped

    for pid in (gateway_pid, standin_pid):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while any(p in dict(ours(state)) for p in (gateway_pid, standin_pid)):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    reuse = Run(env)
    reuse.wait_for(READY)
    assert "reusing PostgreSQL left running by an earlier run" in reuse.output
    assert "reusing Valkey left running by an earlier run" in reuse.output
    reuse.signal(signal.SIGINT)
    assert reuse.wait() == 0, reuse.output
    assert_nothing_left(state, env)  # the adopted servers were stopped too


CLUSTER_PHASES = [
    "starting the local Kubernetes control plane",
    "playing the cluster's storage provisioner",
    "starting the operator",
    "operator running",
    "applying manifests/samples/",
]


@pytest.mark.cluster
@pytest.mark.parametrize("phase", CLUSTER_PHASES)
def test_sigint_while_the_cluster_starts_stops_everything(
    env: dict[str, str], state: Path, phase: str
) -> None:
    """`make run-cluster`: the control plane, kwok, the cluster's roles (stand-ins on Pod
    IPs, forwarders on ClusterIPs) and the operator go too."""
    run = Run(env, ("--cluster",))
    run.wait_for(phase, timeout=600)
    run.signal(signal.SIGINT)
    assert run.wait(120) == 130, run.output
    assert "interrupted by SIGINT while starting" in run.output
    assert READY not in run.output
    assert_nothing_left(state, env)
    assert port_free(int(env["TOLLGATE_DEV_OPERATOR_METRICS_PORT"]))


def _ready(custom: client.CustomObjectsApi, plural: str, name: str) -> bool:
    try:
        obj = custom.get_namespaced_custom_object("tollgate.dev", "v1alpha1", DEMO, plural, name)
    except ApiException:
        return False
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


DEMO = "tollgate-demo"


@pytest.mark.cluster
def test_run_cluster_serves_the_samples_through_the_gateway(
    env: dict[str, str], state: Path
) -> None:
    """The whole story of `make run-cluster`: the samples applied, the pool's Pod gets its
    volume and an Ollama on its IP, the aliases become Ready behind the pool's ClusterIP, and
    the key from the ApiKey's Secret gets a chat, embeddings and an Ollama-native chat
    through the gateway."""
    run = Run(env, ("--cluster",))
    try:
        run.wait_for(READY, timeout=600)
        cluster = LocalCluster(state / "cluster")
        assert f"export KUBECONFIG={cluster.kubeconfig}" in run.output
        assert f"PATH={cluster.bin_dir}" in run.output
        metrics = f"http://127.0.0.1:{env['TOLLGATE_DEV_OPERATOR_METRICS_PORT']}/metrics"
        assert f"operator metrics on {metrics}" in run.output
        assert "tollgate_operator_reconciles_total" in httpx.get(metrics, timeout=10).text
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom = client.CustomObjectsApi(api)
        for plural, name in (
            ("ollamapools", "small"),
            ("modelaliases", "chat-small"),
            ("modelaliases", "embeddings"),
            ("modelaliases", "qwen2.5-0.5b"),
            ("apikeys", "demo-app"),
        ):
            deadline = time.monotonic() + 240
            while not _ready(custom, plural, name):
                assert time.monotonic() < deadline, f"{plural}/{name} never Ready\n{run.output}"
                time.sleep(1)
        secret = client.CoreV1Api(api).read_namespaced_secret("demo-app-api-key", DEMO)
        key = base64.b64decode(secret.data["api-key"]).decode()
        api.close()
        gateway = f"http://127.0.0.1:{env['TOLLGATE_PORT']}"
        headers = {"Authorization": f"Bearer {key}"}
        hi = [{"role": "user", "content": "Hi"}]
        calls = [
            ("/v1/chat/completions", {"model": "chat-small", "messages": hi, "max_tokens": 8}),
            ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hello"}),
            ("/api/chat", {"model": "qwen2.5:0.5b", "messages": hi, "stream": False}),
        ]
        for path, body in calls:
            response = httpx.post(gateway + path, json=body, headers=headers, timeout=60)
            assert response.status_code == 200, (path, response.text)
        assert httpx.post(gateway + "/v1/embeddings", json=calls[1][1], headers=headers,
                          timeout=60).json()["data"][0]["embedding"]  # fmt: skip
    finally:
        run.signal(signal.SIGINT)
        assert run.wait(120) == 0, run.output
    assert_nothing_left(state, env)
    assert port_free(int(env["TOLLGATE_DEV_OPERATOR_METRICS_PORT"]))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop
def test_an_interrupt_dropped_inside_a_finalizer_stops_the_next_step() -> None:
    """A handler that runs inside a `__del__` (or a weakref callback) raises there, and Python
    prints and drops the exception: a clean-clone run once served the gateway after a SIGINT
    that came while the collector ran. The next step's checkpoint raises it again."""
    from tollgate_dev.cli import Interrupted, Signals
    from tollgate_dev.proc import on_resume

    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        signals = Signals()

        class Dropped:
            def __del__(self) -> None:
                signals._handle(signal.SIGINT, None)  # as Python calls it, mid-finalizer

        Dropped()  # "Exception ignored in ...": the start-up would go on
        assert signals.received == signal.SIGINT
        with pytest.raises(Interrupted) as raised:
            signals.checkpoint()
        assert raised.value.args == (signal.SIGINT,)
        signals.starting = False  # serving: a signal only asks to stop
        signals.checkpoint()
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
        on_resume(None)
