"""`make run`: the gateway on embedded defaults.

Unless POSTGRES_DSN / REDIS_URL are set, starts a local PostgreSQL 18 and Valkey 9
(data under .state/, reused across runs), applies migrations, creates the first
admin and serves the gateway on 127.0.0.1:8000 (TOLLGATE_PORT) in front of
OLLAMA_BASE_URL. With --standin it also runs the Ollama stand-in (a test double,
not Ollama) and prepares a demo alias and key, so a curl gets a completion.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
from kubernetes import config

from tollgate_dev.controlplane.cluster import LocalCluster
from tollgate_dev.controlplane.roles import OLLAMA_PORT, FakeCluster
from tollgate_dev.proc import (
    ServiceError,
    command_of,
    cwd_of,
    deferring,
    free_port,
    on_resume,
    port_free,
    port_owner,
    repo_root,
    spawning,
    stop_process,
    wait_http,
)
from tollgate_dev.servers.backing import LocalPostgres, LocalValkey
from tollgate_dev.servers.programs import GatewayProcess, StandinProcess
from tollgate_dev.servers.realollama import RealOllama

REPO = repo_root()
STATE = Path(os.environ.get("TOLLGATE_STATE_DIR", REPO / ".state")).resolve()
DEMO_ALIAS = "llama3"
DEMO_TAG = "llama3:8b"


def say(message: str) -> None:
    print(f"tollgate: {message}", flush=True)


def _secret_file(name: str, length: int) -> str:
    path = STATE / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(length))
        path.chmod(0o600)
    return path.read_text().strip()


class Interrupted(BaseException):
    """SIGINT or SIGTERM during start-up: unwind, stopping whatever has started."""


class Signals:
    """SIGINT and SIGTERM, handled the same way at every moment of `make run`.

    Installed explicitly: a `make run` started in the background by a shell inherits an
    ignored SIGINT, and Python's default SIGTERM ends the process without running the
    clean-up that stops the servers it started (each in a session of its own). During
    start-up the first signal raises `Interrupted`; later ones, and any while serving or
    cleaning up, only ask to stop.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.starting = True
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        on_resume(self._act)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is None and self.starting and deferring(signum):
            return  # a child is being spawned: acted on as soon as it is recorded
        self._act(signum)

    def _act(self, signum: int) -> None:
        first = self.received is None
        self.received = signum
        if first and self.starting:
            raise Interrupted(signum)

    def checkpoint(self) -> None:
        """Between start-up steps: raise `Interrupted` for a signal already received. Python
        runs a handler between any two bytecodes, also inside a weakref callback or a
        `__del__` the collector calls, and an exception raised there is printed and dropped;
        the step then goes on as if nothing came, and this is where the start-up stops."""
        if self.starting and self.received is not None:
            raise Interrupted(self.received)


def _busy_ports(wanted: dict[str, int]) -> list[str]:
    """Why each wanted port cannot be used, naming the owner when we can see it."""
    problems = []
    for what, port in wanted.items():
        if port_free(port):
            continue
        pid = port_owner(port)
        if pid is None:
            problems.append(f"port {port} ({what}) is in use")
            continue
        command = command_of(pid)
        hint = ""
        if "tollgate" in command or str(STATE) in command or cwd_of(pid) == REPO:
            hint = " — left running by an earlier `make run`?"
        problems.append(
            f"port {port} ({what}) is in use by pid {pid} ({command[:120]}){hint} "
            f"stop it with: kill {pid}"
        )
    return problems


def _plan_backing_services(
    env: dict[str, str],
) -> tuple[LocalPostgres | None, LocalValkey | None, dict[str, int]]:
    """The local servers to start or adopt, and the ports that must be free for the rest."""
    ports: dict[str, int] = {}
    pg = vk = None
    if not env.get("POSTGRES_DSN"):
        pg = LocalPostgres(
            STATE / "postgres", port=int(env.get("TOLLGATE_DEV_POSTGRES_PORT", "55432"))
        )
        if pg.leftover() is None:
            ports["PostgreSQL"] = pg.port
    if not env.get("REDIS_URL"):
        vk = LocalValkey(
            STATE / "valkey", port=int(env.get("TOLLGATE_DEV_REDIS_PORT", "56379")), persist=True
        )
        if vk.leftover() is None:
            ports["Valkey"] = vk.port
    return pg, vk, ports


def _start_backing_services(
    stack: ExitStack, env: dict[str, str], pg: LocalPostgres | None, vk: LocalValkey | None
) -> None:
    if pg is not None:
        stack.callback(pg.stop)  # registered first: a signal during start still stops it
        left = pg.leftover()
        if left is not None:
            pid, port = left
            say(f"reusing PostgreSQL left running by an earlier run (pid {pid}, port {port})")
            env["POSTGRES_DSN"] = pg.adopt(pid, port)
        else:
            say(f"starting PostgreSQL 18 on 127.0.0.1:{pg.port} (data in {pg.data_dir})")
            env["POSTGRES_DSN"] = pg.start()
    if vk is not None:
        stack.callback(vk.stop)
        left_pid = vk.leftover()
        if left_pid is not None:
            say(f"reusing Valkey left running by an earlier run (pid {left_pid}, port {vk.port})")
            env["REDIS_URL"] = vk.adopt(left_pid)
        else:
            say(f"starting Valkey 9 on 127.0.0.1:{vk.port}")
            env["REDIS_URL"] = vk.start()


def _migrate(env: dict[str, str]) -> None:
    from tollgate_gateway.cli import migrate
    from tollgate_gateway.config import Settings

    migrate(Settings(postgres_dsn=env["POSTGRES_DSN"]))


def _ollama_answers(url: str) -> bool:
    try:
        return httpx.get(url.rstrip("/") + "/api/version", timeout=1.5).status_code == 200
    except httpx.HTTPError:
        return False


async def _prepare_demo(env: dict[str, str]) -> str:
    """The demo alias and a demo key (written to .state/demo-key), made once."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from tollgate_gateway.admin import schemas, service
    from tollgate_schema.db import create_engine
    from tollgate_schema.dsn import to_sqlalchemy_dsn
    from tollgate_schema.keys import hash_key
    from tollgate_schema.orm import ApiKey, Model

    engine = create_engine(to_sqlalchemy_dsn(env["POSTGRES_DSN"]), pool_size=1)
    key_file = STATE / "demo-key"
    pepper = env.get("TOLLGATE_KEY_PEPPER", "").encode()
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            if (
                await session.execute(select(Model).where(Model.alias == DEMO_ALIAS))
            ).first() is None:
                await service.create_model(
                    session,
                    schemas.ModelIn(
                        alias=DEMO_ALIAS, backend_tag=DEMO_TAG, backend_url=env["OLLAMA_BASE_URL"]
                    ),
                )
            else:
                row = (
                    await session.execute(select(Model).where(Model.alias == DEMO_ALIAS))
                ).scalar_one()
                row.backend_url = env["OLLAMA_BASE_URL"]
                await session.commit()
            if key_file.exists():
                digest = hash_key(key_file.read_text().strip(), pepper)
                found = (
                    await session.execute(
                        select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
                    )
                ).first()
                if found is not None:
                    return key_file.read_text().strip()
            _, plaintext = await service.create_key(
                session, schemas.KeyCreate(name="demo", owner="make run", app="demo"), pepper
            )
            key_file.write_text(plaintext)
            key_file.chmod(0o600)
            return plaintext
    finally:
        await engine.dispose()


def _run_group(command: list[str]) -> None:
    """Run a build script in a process group of its own, and end the whole group (its
    compilers too) if we are interrupted."""
    with spawning():
        proc = subprocess.Popen(command, process_group=0)
    try:
        code = proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    if code != 0:
        raise subprocess.CalledProcessError(code, command)


def _build_console() -> None:
    """Builds the web console when its sources changed (cached); the gateway runs without it.
    Interruptible like every other start-up step (its own process group is ended)."""
    try:
        _run_group([str(REPO / "hack" / "build-console.sh")])
    except (OSError, subprocess.CalledProcessError) as exc:
        say(f"WARNING: the console could not be built ({exc}); /console answers 404 until it is")


def _kubectl(cluster: LocalCluster, *args: str) -> None:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    subprocess.run(
        [str(cluster.bin_dir / "kubectl"), *args], check=True, env=env, stdout=subprocess.DEVNULL
    )


# Samples that need something made by hand first (a user's Secret): left for the reader.
SAMPLES_BY_HAND = {"apikey-existing-secret.yaml"}


def _start_cluster_and_operator(
    stack: ExitStack,
    env: dict[str, str],
    gateway_url: str,
    metrics_port: int,
    real_ollama: bool = False,
) -> LocalCluster:
    """The local control plane, the parts of a cluster it lacks (storage provisioner, an
    Ollama on each pool Pod's IP, ClusterIP forwarding: the tests' `FakeCluster`), the CRDs,
    the operator and the samples of manifests/samples/."""
    say("starting the local Kubernetes control plane (the first run builds it: ~8 min)")
    _run_group([str(REPO / "hack" / "build-k8s.sh")])
    cluster = LocalCluster(STATE / "cluster")
    stack.callback(cluster.stop)
    cluster.start()
    _kubectl(cluster, "apply", "--server-side", "-f", str(REPO / "crds"))
    runtime = "the real Ollama" if real_ollama else "the Ollama stand-in"
    say(
        "playing the cluster's storage provisioner, kube-proxy and container runtime "
        f"({runtime} on each pool Pod's IP)"
    )
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    stack.callback(api.close)
    logs = STATE / "cluster-roles"
    logs.mkdir(parents=True, exist_ok=True)
    roles = FakeCluster(api, logs, [], _real_ollama(logs) if real_ollama else None)
    stack.callback(roles.stop)
    roles.start()
    say("starting the operator")
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    op_env = {
        **env,
        "KUBECONFIG": str(cluster.kubeconfig),
        "TOLLGATE_GATEWAY_URL": gateway_url,
        # No cluster DNS locally: gateways reach a pool at its Service's ClusterIP.
        "TOLLGATE_BACKEND_URL_TEMPLATE": "http://{cluster_ip}:{port}",
        "TOLLGATE_LEASE_NAMESPACE": "default",
        "TOLLGATE_LIVENESS_ENDPOINT": liveness,
        "TOLLGATE_METRICS_HOST": "127.0.0.1",
        "TOLLGATE_METRICS_PORT": str(metrics_port),
    }
    log = open(STATE / "operator.log", "ab")  # noqa: SIM115
    with spawning():
        proc = subprocess.Popen(
            [sys.executable, "-m", "tollgate_operator", "--all-namespaces"],
            env={**os.environ, **op_env},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        stack.callback(stop_process, proc)
    log.close()
    wait_http(liveness, 60, proc)
    say(f"operator running (log: {STATE / 'operator.log'})")
    say("applying manifests/samples/")
    samples = sorted(p for p in (REPO / "manifests" / "samples").glob("*.yaml"))
    files = [a for p in samples if p.name not in SAMPLES_BY_HAND for a in ("-f", str(p))]
    _kubectl(cluster, "apply", *files)
    return cluster


def _real_ollama(logs: Path) -> Callable[[str], RealOllama]:
    def start(ip: str) -> RealOllama:
        ollama = RealOllama(host=ip, port=OLLAMA_PORT, root=logs / f"ollama-{ip}")
        try:
            ollama.start()
        except BaseException:
            ollama.stop()
            raise
        return ollama

    return start


def _say_cluster_next(cluster: LocalCluster, port: str, metrics_port: int) -> None:
    if (REPO / ".state").resolve() == STATE:
        say('use the cluster from a shell:  eval "$(make -s cluster-env)"')
    else:
        say(f'use the cluster from a shell:  export KUBECONFIG={cluster.kubeconfig} '
            f'PATH={cluster.bin_dir}:"$PATH"')  # fmt: skip
    say(f"operator metrics on http://127.0.0.1:{metrics_port}/metrics")
    say("then try:")
    say("  kubectl get tollgate -A            # aliases pulled and Ready, keys, the pool")
    say(
        "  KEY=$(kubectl -n tollgate-demo get secret demo-app-api-key "
        "-o jsonpath='{.data.api-key}' | base64 -d)"
    )
    body = json.dumps({"model": "chat-small", "messages": [{"role": "user", "content": "Hi"}]})
    say(
        f'  curl http://127.0.0.1:{port}/v1/chat/completions -H "Authorization: Bearer $KEY" '
        f"-H 'Content-Type: application/json' -d '{body}'"
    )
    say(
        "  (also text-embedding-3-small on /v1/embeddings and qwen2.5:0.5b on /api/chat; "
        "manifests/samples/apikey-existing-secret.yaml needs its Secret legacy-client-key first)"
    )


def run(with_standin: bool, with_cluster: bool = False, real_ollama: bool = False) -> int:
    signals = Signals()
    STATE.mkdir(parents=True, exist_ok=True)
    STATE.chmod(0o755)  # the unprivileged PostgreSQL user must reach its data when we are root
    env = dict(os.environ)
    env.setdefault("ADMIN_EMAIL", "admin@localhost")
    if "ADMIN_PASSWORD" not in env:
        env["ADMIN_PASSWORD"] = _secret_file("admin-password", 18)
    env.setdefault("JWT_SECRET", _secret_file("jwt-secret", 48))
    env.setdefault("TOLLGATE_KEY_PEPPER", _secret_file("key-pepper", 32))
    env.setdefault("TOLLGATE_USAGE_SPOOL_DIR", str(STATE / "usage-spool"))
    port = env.setdefault("TOLLGATE_PORT", "8000")
    metrics_port = env.setdefault("TOLLGATE_METRICS_PORT", "9090")
    standin_port = int(env.get("TOLLGATE_DEV_STANDIN_PORT", "11434"))
    operator_metrics = int(env.get("TOLLGATE_DEV_OPERATOR_METRICS_PORT", "9091"))
    try:
        with ExitStack() as stack:
            try:
                pg, vk, ports = _plan_backing_services(env)
                ports["the gateway"] = int(port)
                ports["the gateway's metrics"] = int(metrics_port)
                if with_standin:
                    ports["the Ollama stand-in"] = standin_port
                if with_cluster:
                    ports["the operator's metrics"] = operator_metrics
                busy = _busy_ports(ports)
                if busy:  # before anything starts
                    for problem in busy:
                        say(f"cannot start: {problem}")
                    return 1
                _start_backing_services(stack, env, pg, vk)
                signals.checkpoint()
                say("applying migrations")
                _migrate(env)
                signals.checkpoint()
                if with_standin:
                    standin = StandinProcess(port=standin_port, log_path=STATE / "standin.log")
                    stack.callback(standin.stop)
                    say(
                        "starting the Ollama stand-in (a test double, not Ollama) "
                        f"on :{standin.port}"
                    )
                    env["OLLAMA_BASE_URL"] = standin.start()
                    signals.checkpoint()
                    demo_key = asyncio.run(_prepare_demo(env))
                    signals.checkpoint()
                env.setdefault("OLLAMA_BASE_URL", "http://127.0.0.1:11434")
                if not _ollama_answers(env["OLLAMA_BASE_URL"]):
                    say(
                        f"WARNING: no Ollama answers at {env['OLLAMA_BASE_URL']}. The gateway "
                        "starts, but completions fail with 502 until it does. Set "
                        "OLLAMA_BASE_URL, or try `make run-standin`."
                    )
                _build_console()
                signals.checkpoint()
                gateway = GatewayProcess(env, port=int(port), metrics_port=int(metrics_port))
                stack.callback(gateway.stop)
                say(
                    f"serving the gateway on http://127.0.0.1:{port}  (admin: "
                    f"{env['ADMIN_EMAIL']}, password in {STATE / 'admin-password'} unless "
                    "ADMIN_PASSWORD is set)"
                )
                gateway.start(timeout=120)
                signals.checkpoint()
                say(f"metrics on {gateway.metrics_url}")
                say(f"console: http://127.0.0.1:{port}/console/")
            except (ServiceError, OSError) as exc:
                say(f"could not start: {exc}")
                return 1
            if with_cluster:
                try:
                    cluster = _start_cluster_and_operator(
                        stack, env, gateway.url, operator_metrics, real_ollama
                    )
                except (ServiceError, OSError, subprocess.CalledProcessError) as exc:
                    say(f"could not start the cluster or the operator: {exc}")
                    return 1
                signals.checkpoint()
                _say_cluster_next(cluster, port, operator_metrics)
            if with_standin:
                say(f"demo key (also in {STATE / 'demo-key'}): {demo_key}")
                body = json.dumps(
                    {"model": DEMO_ALIAS, "messages": [{"role": "user", "content": "Hello"}]}
                )
                say(
                    f"try:  curl http://127.0.0.1:{port}/v1/chat/completions "
                    '-H "Authorization: Bearer $(cat .state/demo-key)" '
                    f"-H 'Content-Type: application/json' -d '{body}'"
                )
            signals.checkpoint()
            signals.starting = False
            if signals.received is not None:  # arrived between the last step and now
                say("stopping")
                return 0
            say("press Ctrl-C to stop")
            assert gateway.proc is not None
            while signals.received is None and gateway.proc.poll() is None:
                time.sleep(0.2)
            say("stopping")
            code = gateway.stop()
        say("stopped")
        return 0 if code in (0, -signal.SIGTERM, None) else code
    except Interrupted as exc:
        signals.starting = False
        say(
            f"interrupted by {signal.Signals(exc.args[0]).name} while starting; "
            "stopped what had started"
        )
        return 130 if exc.args[0] == signal.SIGINT else 143


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tollgate-dev", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="serve the gateway on embedded defaults")
    run_parser.add_argument(
        "--standin",
        action="store_true",
        help="also run the Ollama stand-in with a demo alias and key",
    )
    run_parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run the local control plane (with the storage, network and runtime roles "
        "it lacks), the operator and manifests/samples/",
    )
    run_parser.add_argument(
        "--real-ollama",
        action="store_true",
        help="with --cluster: the real Ollama on each pool Pod's IP instead of the stand-in "
        "(it pulls models from its registry)",
    )
    sub.add_parser("migrate", help="apply migrations (starts the local Postgres if needed)")
    args = parser.parse_args(argv)
    if args.command == "run":
        sys.exit(run(args.standin, args.cluster, args.real_ollama))
    env = dict(os.environ)
    Signals()
    with ExitStack() as stack:
        STATE.mkdir(parents=True, exist_ok=True)
        pg, vk, _ = _plan_backing_services(env)
        _start_backing_services(stack, env, pg, vk)
        _migrate(env)
    say("migrations applied")


if __name__ == "__main__":
    main()
