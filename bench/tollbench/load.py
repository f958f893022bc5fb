"""The load generators: wrk (with a Lua script) for whole responses, streamload (Go) for
streams. Each runs pinned to its CPUs; its own CPU time is measured (did it saturate?)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
POST_LUA = BENCH / "load" / "post.lua"


@dataclass
class Generated:
    command: str
    seconds: float
    cpu_seconds: float
    output: dict[str, Any]

    @property
    def cores_used(self) -> float:
        return round(self.cpu_seconds / self.seconds, 3) if self.seconds else 0.0


def _run(argv: list[str], timeout: float) -> tuple[str, str, float]:
    """Run to completion; returns stdout, stderr and wall seconds."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"{shlex.join(argv)} did not finish within {timeout:.0f}s") from None
    return out.decode(), err.decode(), time.monotonic() - started


def _children_cpu() -> float:
    """CPU seconds of our reaped children: a generator's own cost, read around its run."""
    usage = os.times()
    return usage.children_user + usage.children_system


def wrk(
    url: str,
    body_file: Path,
    key: str,
    connections: int,
    seconds: float,
    cpus: str,
) -> Generated:
    argv = [
        "taskset",
        "-c",
        cpus,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "30s",
        "-s",
        str(POST_LUA),
        url,
        "--",
        str(body_file),
        key,
    ]
    before = _children_cpu()
    out, err, wall = _run(argv, timeout=seconds + 60)
    cpu = _children_cpu() - before
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}\n{err}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    duration = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    errors = sum(raw["errors"].values())
    result = {
        "requests": raw["requests"],
        "rps": round(raw["requests"] / duration, 1),
        "errors": errors,
        "error_detail": raw["errors"],
        "latency_ms": {
            "mean": round(lat["mean"] / 1000, 3),
            "p50": round(lat["50"] / 1000, 3),
            "p90": round(lat["90"] / 1000, 3),
            "p99": round(lat["99"] / 1000, 3),
            "p999": round(lat["99.9"] / 1000, 3),
            "max": round(lat["max"] / 1000, 3),
        },
    }
    shown = [*argv[:-1], "$KEY" if key else ""]
    return Generated(shlex.join(shown).rstrip(" '"), wall, cpu, result)


def streamload(
    binary: Path,
    url: str,
    key: str,
    model: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    cpus: str,
    api: str = "openai",
) -> Generated:
    argv = [
        "taskset",
        "-c",
        cpus,
        str(binary),
        "-url",
        url,
        "-model",
        model,
        "-c",
        str(concurrency),
        "-duration",
        f"{seconds:g}s",
        "-warmup",
        f"{warmup:g}s",
        "-ramp",
        f"{min(2.0, warmup / 2):g}s",
    ]
    if api != "openai":
        argv += ["-api", api]
    if key:
        argv += ["-key", key]
    before = _children_cpu()
    out, err, wall = _run(argv, timeout=seconds + 120)
    cpu = _children_cpu() - before
    try:
        result = json.loads(out)
    except json.JSONDecodeError:
        raise RuntimeError(f"streamload printed no result:\n{out}\n{err}") from None
    shown = [*argv[:-2], "-key", "$KEY"] if key else argv
    return Generated(shlex.join(shown), wall, cpu, result)
