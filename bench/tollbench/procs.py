"""Processes pinned to CPUs, and what they cost: CPU seconds and resident memory."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int) -> list[int]:
    """pid and every process below it (a server's workers, PostgreSQL's backends)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        total += int(fields[1]) * PAGE
    return total


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size: shared pages (PostgreSQL's buffers) counted once in a tree."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def wait_quiet(
    watched: list[Watched], limit: float = 0.03, window: float = 0.5, timeout: float = 120
) -> float:
    """Wait until the watched processes together use less than `limit` cores over `window`
    seconds (a system still working off an earlier load must not share the CPU with the next
    measurement). Returns the seconds waited."""
    started = time.monotonic()
    while True:
        before = sum(cpu_seconds(w.tree()) for w in watched)
        time.sleep(window)
        used = sum(cpu_seconds(w.tree()) for w in watched) - before
        waited = time.monotonic() - started
        if used / window < limit or waited > timeout:
            return waited


def pin(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


def cpu_times() -> dict[str, tuple[float, float]]:
    """Per-CPU (busy, total) jiffies from /proc/stat, to see what else ran on a core."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            nums = [float(v) for v in values]
            idle = nums[3] + nums[4]
            out[name] = (sum(nums) - idle, sum(nums))
    return out


@dataclass
class Proc:
    """A child process on given CPUs (via taskset), logging to a file."""

    name: str
    argv: list[str]
    cpus: str
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def command(self) -> str:
        return shlex.join(["taskset", "-c", self.cpus, *self.argv])

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                ["taskset", "-c", self.cpus, *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tree(self) -> list[int]:
        return descendants(self.pid) if self.alive() else []

    def stop(self, grace: float = 20) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@dataclass
class Watched:
    """Something whose CPU and memory we account for: a Proc or a pid tree we did not start."""

    name: str
    role: str  # "sut", "upstream", "loadgen", "datastore"
    cpus: str
    pids: Callable[[], list[int]]

    def tree(self) -> list[int]:
        return self.pids()


class CpuMeter:
    """CPU use of watched processes and of each core over one interval."""

    def __init__(self, watched: list[Watched]) -> None:
        self.watched = watched
        self._t0 = time.monotonic()
        self._cpu0 = {w.name: cpu_seconds(w.tree()) for w in watched}
        self._cores0 = cpu_times()

    def stop(self) -> dict[str, object]:
        elapsed = time.monotonic() - self._t0
        processes = {}
        for w in self.watched:
            used = cpu_seconds(w.tree()) - self._cpu0[w.name]
            tree = w.tree()
            processes[w.name] = {
                "role": w.role,
                "cpus": w.cpus,
                "cores_used": round(used / elapsed, 3),
                "rss_mib": round(rss_bytes(tree) / 2**20, 1),
                "pss_mib": round(pss_bytes(tree) / 2**20, 1),
            }
        cores = {}
        now = cpu_times()
        for name, (busy, total) in now.items():
            b0, t0 = self._cores0.get(name, (0.0, 0.0))
            cores[name] = round((busy - b0) / max(total - t0, 1), 3)
        return {"seconds": round(elapsed, 2), "processes": processes, "core_busy": cores}
