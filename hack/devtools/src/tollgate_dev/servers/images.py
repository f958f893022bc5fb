"""The project's container images: built with ``hack/build-images.sh``, run with podman.

``build_images`` builds the gateway, operator and Ollama images from their Dockerfiles on the
local base images (see ``hack/build-base-images.sh``) and returns where they are;
``Container`` runs one (detached, on the host's network, so that it reaches the Postgres,
Valkey, stand-in and API server the tests start on loopback); ``pod_flags`` turns the security
context and volumes of a Pod, as the chart or the operator writes them, into podman's flags, so
that a container runs as its Pod would: the same user, a read-only root filesystem, no
capabilities, and the Pod's emptyDirs as tmpfs mounts.

Podman runs rootful with runc and with lowered limits, as in ``hack/container-engine.sh``.
``podman_problem`` says why podman cannot run containers on this machine (or None).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollgate_dev.proc import repo_root

PODMAN = ("podman", "--runtime", "runc")
RUN_FLAGS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
NAMES = ("gateway", "operator", "ollama")
BUILD_SCRIPT = Path("hack") / "build-images.sh"
TEST_REGISTRY = "localhost/tollgate"
TEST_TAG = "test"
TEST_OUT = Path(".state") / "images" / "test"
"""Where the tests' builds write package lists, SBOMs and logs (under the repository)."""
PREBUILT_ENV = "TOLLGATE_IMAGES_PREBUILT"
"""Set (to 1) by hack/test.sh once it has built the images: the tests then use them as built."""
CONTAINER_LABEL = "dev.tollgate.test"
"""Set on every container started here (``podman ps --filter label=dev.tollgate.test``)."""


class ImageError(RuntimeError):
    """A build, a podman command or a container failed; the message says why."""


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``podman --runtime runc ARGS``; raises :class:`ImageError` on failure when ``check``."""
    try:
        result = subprocess.run(
            [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise ImageError(f"podman is not installed: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"podman {' '.join(args[:3])} took more than {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        raise ImageError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def podman_problem() -> str | None:
    """Why podman cannot run containers here, or None when it can."""
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return (
                f"{tool} is not installed: `hack/ensure-debs.sh podman runc` installs it on "
                "Debian (as root); elsewhere install podman and runc with the system's tools"
            )
    try:
        info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=60, check=False)
    except ImageError as exc:
        return str(exc)
    if info.returncode != 0:
        return f"`podman info` fails: {info.stderr.strip()}"
    return None


# --- building --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImages:
    """The images ``hack/build-images.sh`` built, and the folder of its lists and SBOMs."""

    registry: str
    tag: str
    out: Path

    def ref(self, name: str) -> str:
        return f"{self.registry}/tollgate-{name}:{self.tag}"

    def inspect(self, name: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(podman("image", "inspect", self.ref(name)).stdout)
        return data[0]

    def size(self, name: str) -> int:
        return int(self.inspect(name)["Size"])


def build_images(
    out: Path | None = None,
    names: Sequence[str] = NAMES,
    registry: str = TEST_REGISTRY,
    tag: str = TEST_TAG,
    timeout: float = 1800,
) -> BuiltImages:
    """Run ``hack/build-images.sh`` (podman, local bases); quick when nothing changed.

    With ``TOLLGATE_IMAGES_PREBUILT=1`` (hack/test.sh built them just before) only checks
    that the images are there.
    """
    out = out or repo_root() / TEST_OUT
    built = BuiltImages(registry, tag, out)
    if os.environ.get(PREBUILT_ENV) == "1":
        missing = [
            n for n in names if podman("image", "exists", built.ref(n), check=False).returncode
        ]
        if not missing:
            return built
    env = {
        **os.environ,
        "CONTAINER_ENGINE": "podman",
        "IMAGE_BASES": "local",
        "IMAGE_REGISTRY": registry,
        "IMAGE_TAG": tag,
        "IMAGE_OUT": str(out),
    }
    try:
        result = subprocess.run(
            ["bash", str(repo_root() / BUILD_SCRIPT), *names],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{BUILD_SCRIPT} took more than {timeout:.0f}s") from exc
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-40:])
        raise ImageError(f"{BUILD_SCRIPT} {' '.join(names)} failed:\n{tail}")
    return built


# --- Pods as podman flags --------------------------------------------------------------------

_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|k|M|G)?$")
_UNITS = {None: 1, "k": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def _bytes(quantity: str) -> int:
    match = _QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"unsupported quantity {quantity!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def pod_flags(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    volumes: Mapping[str, Path] | None = None,
) -> list[str]:
    """podman flags that run ``container`` of ``pod`` (a PodSpec) as Kubernetes would.

    The Pod's ``runAsUser``/``runAsGroup`` become ``--user``, ``fsGroup`` an extra group;
    the container's ``readOnlyRootFilesystem`` becomes ``--read-only`` (without podman's own
    tmpfs mounts: only what the Pod mounts is writable), ``allowPrivilegeEscalation: false``
    ``no-new-privileges``, ``capabilities`` ``--cap-drop``/``--cap-add``. Each volume mount of
    an ``emptyDir`` becomes a tmpfs of its ``sizeLimit``; any other volume (e.g. a
    PersistentVolumeClaim) must be given in ``volumes`` as a host folder (see
    :func:`prepare_volume`).
    """
    flags: list[str] = []
    pod_context: Mapping[str, Any] = pod.get("securityContext") or {}
    context: Mapping[str, Any] = {**pod_context, **(container.get("securityContext") or {})}
    user = context.get("runAsUser")
    if user is not None:
        group = context.get("runAsGroup", user)
        flags += ["--user", f"{user}:{group}"]
    elif context.get("runAsNonRoot"):
        raise ValueError("runAsNonRoot without runAsUser: give the Pod a numeric user")
    if user == 0 and context.get("runAsNonRoot"):
        raise ValueError("runAsNonRoot with runAsUser 0")
    if pod_context.get("fsGroup") is not None:
        flags += ["--group-add", str(pod_context["fsGroup"])]
    if context.get("readOnlyRootFilesystem"):
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if context.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    capabilities: Mapping[str, Any] = context.get("capabilities") or {}
    for cap in capabilities.get("drop", []):
        flags += ["--cap-drop", str(cap)]
    for cap in capabilities.get("add", []):
        flags += ["--cap-add", str(cap)]
    by_name = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        name, path = mount["name"], mount["mountPath"]
        readonly = ",ro" if mount.get("readOnly") else ""
        if volumes and name in volumes:
            flags += ["--volume", f"{volumes[name]}:{path}:{'ro' if readonly else 'rw'}"]
            continue
        volume = by_name.get(name)
        if volume is None or "emptyDir" not in volume:
            raise ValueError(f"volume {name!r} ({path}) is no emptyDir: give it a host folder")
        options = ["rw", "mode=1777"]
        limit = (volume["emptyDir"] or {}).get("sizeLimit")
        if limit:
            options.append(f"size={_bytes(limit)}")
        flags += ["--tmpfs", f"{path}:{','.join(options)}{readonly}"]
    return flags


def prepare_volume(path: Path, pod: Mapping[str, Any]) -> Path:
    """Make ``path`` what a volume is for the Pod: owned by its ``fsGroup``, group-writable."""
    path.mkdir(parents=True, exist_ok=True)
    group = (pod.get("securityContext") or {}).get("fsGroup")
    if group is not None:
        os.chown(path, 0, int(group))
        path.chmod(0o2775)
    return path


# --- containers ------------------------------------------------------------------------------


@dataclass
class Container:
    """``podman run -d`` of ``image`` on the host's network; ``stop`` removes it.

    ``flags`` go before the image (e.g. from :func:`pod_flags`), ``args`` after it;
    ``entrypoint`` replaces the image's.
    """

    image: str
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    flags: Sequence[str] = ()
    entrypoint: str | None = None
    name: str = field(default_factory=lambda: f"tollgate-test-{uuid.uuid4().hex[:10]}")
    started: bool = field(default=False, init=False)

    def command(self, detach: bool = True) -> list[str]:
        command = ["run", "--network", "host", "--label", f"{CONTAINER_LABEL}=1"]
        command += ["-d", "--name", self.name] if detach else ["--rm"]
        command += [*RUN_FLAGS, *self.flags]
        for key, value in self.env.items():
            command += ["--env", f"{key}={value}"]
        if self.entrypoint is not None:
            command += ["--entrypoint", self.entrypoint]
        return [*command, self.image, *self.args]

    def start(self) -> Container:
        podman(*self.command())
        self.started = True
        return self

    def run(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run to completion (``--rm``); the result, whatever the exit status."""
        return podman(*self.command(detach=False), timeout=timeout, check=False)

    def state(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(podman("inspect", self.name).stdout)
        state: dict[str, Any] = data[0]["State"]
        return state

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait(self, timeout: float) -> int:
        """Wait until it exits; its exit code."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise ImageError(f"{self.name} still runs after {timeout:.0f}s:\n{self.logs()}")
            time.sleep(0.2)
        return int(self.state()["ExitCode"])

    def exec(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *args, timeout=timeout, check=False)

    def stop(self, grace: int = 10) -> None:
        if self.started:
            podman(
                "rm", "--force", "--time", str(grace), self.name, timeout=grace + 60, check=False
            )
            self.started = False


def main() -> int:
    """``python -m tollgate_dev.servers.images``: build the images as the tests do (test.sh)."""
    problem = podman_problem()
    if problem:
        print(f"images: podman cannot run containers here: {problem}", file=sys.stderr)
        return 1
    try:
        built = build_images()
    except ImageError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    for name in NAMES:
        print(f"images: {built.ref(name)} {built.size(name) / 1e6:.0f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
