"""The fairness scenario: one pool (a stand-in with ``parallel`` slots), key A floods it with
``flood`` concurrent streams (each worker sends its next as soon as one ends), key B sends
``b_rate`` streams per second. Tollgate's pool queue (slots = ``parallel``) against the
requests passed straight to the stand-in, whose FIFO is Ollama's.

Reported: B's TTFT p50/p99 on an idle pool and under the flood (both systems), A's output
tokens per second against the pool's capacity (slots x tokens per second), and requests
lost (anything but a complete 200 stream).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
from typing import Any

import aiohttp

from tollbench.procs import Proc
from tollbench.systems import Context, Tollgate, _wait_port, free_port

MODEL = "fair:latest"
VARIED_SPREAD = 12  # the variant's A sizes: 16 +- 12 tokens


def _env(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


class Params:
    def __init__(self, a_length_spread: int | None = None) -> None:
        self.parallel = int(_env("BENCH_FAIRNESS_PARALLEL", 4))
        self.flood = int(_env("BENCH_FAIRNESS_FLOOD", 200))
        self.b_rate = _env("BENCH_FAIRNESS_B_RATE", 2.0)
        self.seconds = _env("BENCH_FAIRNESS_SECONDS", 30)
        self.idle_seconds = _env("BENCH_FAIRNESS_IDLE_SECONDS", 10)
        self.ttft_ms = _env("BENCH_FAIRNESS_TTFT_MS", 200)
        self.tokens_per_second = _env("BENCH_FAIRNESS_TOKENS_PER_SECOND", 200)
        self.completion_tokens = int(_env("BENCH_FAIRNESS_COMPLETION_TOKENS", 16))
        # 0: every A request is the same size (the default scenario). N: each A request asks
        # for completion_tokens +- N tokens at random (the same mean), as real ones vary; the
        # bench runs that variant too (VARIED_SPREAD), and `a_length_spread` given wins.
        if a_length_spread is None:
            a_length_spread = int(_env("BENCH_FAIRNESS_A_LENGTH_SPREAD", 0))
        self.a_length_spread = a_length_spread

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @property
    def capacity_tokens_per_second(self) -> float:
        """What the pool can produce: every slot busy, each at the stand-in's pace."""
        service = self.ttft_ms / 1000 + self.completion_tokens / self.tokens_per_second
        return self.parallel * self.completion_tokens / service


def _standin(ctx: Context, p: Params, phase: str) -> tuple[Proc, str]:
    port = free_port()
    argv = [
        sys.executable, "-m", "tollgate_standin", "--port", str(port),
        "--models", MODEL,
        "--ttft-ms", f"{p.ttft_ms:g}",
        "--tokens-per-second", f"{p.tokens_per_second:g}",
        "--completion-tokens", str(p.completion_tokens + p.a_length_spread),
        "--parallel", str(p.parallel),
        "--max-queue", str(p.flood * 4),
        "--request-log-size", "0", "--log-level", "warning",
    ]  # fmt: skip
    proc = Proc("fair-standin", argv, ctx.side_cpus, ctx.work / "logs" / f"fairness-{phase}.log")
    proc.start()
    _wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


async def _stream(
    session: aiohttp.ClientSession,
    url: str,
    key: str | None,
    model: str,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    started = time.perf_counter()
    ttft = None
    tokens = 0
    done = False
    status = 0
    queued = None
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            status = resp.status
            if "x-tollgate-queue-ms" in resp.headers:
                queued = float(resp.headers["x-tollgate-queue-ms"])
            async for line in resp.content:
                if line.startswith(b"data: [DONE]"):
                    done = True
                    continue
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                for choice in event.get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        if ttft is None:
                            ttft = time.perf_counter() - started
                        tokens += 1
    except (aiohttp.ClientError, TimeoutError):
        status = -1
    return {
        "ok": status == 200 and done,
        "ttft": ttft,
        "tokens": tokens,
        "queued_ms": queued,
        "ended": time.perf_counter(),
    }


async def _drive(
    url: str, keys: tuple[str | None, str | None], model: str, p: Params, flood: bool
) -> dict[str, Any]:
    """B at ``b_rate`` per second for the phase (A flooding meanwhile when ``flood``)."""
    seconds = p.seconds if flood else p.idle_seconds
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=p.flood + 64)
    a_results: list[dict[str, Any]] = []
    b_tasks: list[asyncio.Task[dict[str, Any]]] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        stop = time.perf_counter() + seconds

        rng = random.Random(17)  # noqa: S311  (a reproducible workload, not a secret)
        spread = p.a_length_spread
        b_size = p.completion_tokens if spread else None

        def a_size() -> int | None:
            if not spread:
                return None
            return rng.randint(p.completion_tokens - spread, p.completion_tokens + spread)

        async def worker() -> None:
            while time.perf_counter() < stop:
                a_results.append(await _stream(session, url, keys[0], model, a_size()))

        workers = [asyncio.ensure_future(worker()) for _ in range(p.flood if flood else 0)]
        if flood:
            await asyncio.sleep(min(5.0, seconds / 4))  # the flood fills the pool first
        started = time.perf_counter()
        sent = 0
        while time.perf_counter() < stop:
            b_tasks.append(asyncio.ensure_future(_stream(session, url, keys[1], model, b_size)))
            sent += 1
            await asyncio.sleep(max(0.0, started + sent / p.b_rate - time.perf_counter()))
        b_results = list(await asyncio.gather(*b_tasks))
        flooded = time.perf_counter() - started
        await asyncio.gather(*workers)
        wall = time.perf_counter() - started
    b_ttfts = [r["ttft"] * 1000 for r in b_results if r["ok"] and r["ttft"] is not None]
    out: dict[str, Any] = {
        "b_requests": len(b_results),
        "b_lost": sum(1 for r in b_results if not r["ok"]),
        "b_ttft_p50_ms": round(statistics.median(b_ttfts), 1) if b_ttfts else None,
        "b_ttft_p99_ms": round(_quantile(b_ttfts, 0.99), 1) if b_ttfts else None,
    }
    b_queued = [r["queued_ms"] for r in b_results if r["ok"] and r["queued_ms"] is not None]
    if b_queued:  # Tollgate's own account of B's wait for a slot (its response header)
        out["b_queued_p50_ms"] = round(statistics.median(b_queued), 1)
        out["b_queued_p99_ms"] = round(_quantile(b_queued, 0.99), 1)
    if flood:
        out["a_requests"] = len(a_results)
        out["a_lost"] = sum(1 for r in a_results if not r["ok"])
        # A's output over B's phase: the streams that ended in it (the warm-up's excluded).
        a_tokens = sum(r["tokens"] for r in a_results if r["ok"] and r["ended"] >= started)
        out["a_tokens_per_second"] = round(a_tokens / wall, 1)
        out["a_share_of_capacity"] = round(a_tokens / wall / p.capacity_tokens_per_second, 3)
        # The whole pool's use (A and B): what a work-conserving queue keeps near 1.
        b_tokens = sum(r["tokens"] for r in b_results if r["ok"])
        out["pool_share_of_capacity"] = round(
            (a_tokens + b_tokens) / wall / p.capacity_tokens_per_second, 3
        )
        # A's share of what B leaves: B's own requests take their turn first, so A's share
        # of the whole capacity can be at most 1 less B's.
        left = p.capacity_tokens_per_second - b_tokens / wall
        out["a_share_of_capacity_b_leaves"] = round(a_tokens / wall / left, 3)
        out["b_phase_seconds"] = round(flooded, 1)
    return out


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _provision(
    tollgate: Tollgate, url: str, upstream: str, p: Params, pool: str
) -> tuple[str, str]:
    with tollgate.admin(url) as http:
        # A variant run before on the same database left its alias (another stand-in's URL).
        listed = http.get("/admin/models")
        listed.raise_for_status()
        for row in listed.json():
            if row["alias"] == MODEL:
                http.delete(f"/admin/models/{row['id']}").raise_for_status()
        http.post(
            "/admin/models",
            json={
                "alias": MODEL,
                "backend_tag": MODEL,
                "backend_url": upstream,
                "routing": {"pool": pool, "slots": p.parallel, "max_queue": 10_000},
            },
        ).raise_for_status()
        keys = []
        for name in ("flood-a", "steady-b"):
            created = http.post("/admin/keys", json={"name": name, "allowed_models": [MODEL]})
            created.raise_for_status()
            keys.append(str(created.json()["key"]))
        return keys[0], keys[1]


def run(
    ctx: Context,
    say: Any,
    a_length_spread: int | None = None,
    label: str = "fairness",
    systems: tuple[str, ...] = ("tollgate", "fifo"),
) -> dict[str, Any]:
    p = Params(a_length_spread)
    say(
        f"{label}: A floods {p.flood} streams ({p.completion_tokens} +- {p.a_length_spread} "
        f"tokens), B {p.b_rate:g}/s, {p.parallel} slots, {p.seconds:g} s"
    )
    out: dict[str, Any] = {"parameters": p.as_dict(), "systems": {}}
    for name in systems:
        standin, upstream = _standin(ctx, p, f"{label}-{name}")
        tollgate: Tollgate | None = None
        try:
            if name == "tollgate":
                tollgate = Tollgate(ctx, upstream)
                tollgate.extra_env = {
                    "TOLLGATE_ACCESS_LOG": "false",
                    "TOLLGATE_QUEUE_MAX_WAIT_SECONDS": "300",
                }
                tollgate.provision = False  # its own aliases and keys (below)
                url = tollgate.start(upstream, label)
                keys: tuple[str | None, str | None] = _provision(
                    tollgate, url, upstream, p, f"bench/{label}"
                )
            else:
                url, keys = upstream, (None, None)
            target = url + "/v1/chat/completions"
            idle = asyncio.run(_drive(target, keys, MODEL, p, flood=False))
            loaded = asyncio.run(_drive(target, keys, MODEL, p, flood=True))
            summary = {"idle": idle, "flooded": loaded}
            out["systems"][name] = summary
            say(f"{label} {name}: {json.dumps(summary)}")
        finally:
            if tollgate is not None:
                tollgate.stop()
            standin.stop()
    ours = out["systems"].get("tollgate")
    if ours:
        idle_p99 = ours["idle"]["b_ttft_p99_ms"]
        flood_p99 = ours["flooded"]["b_ttft_p99_ms"]
        out["targets"] = {
            "b_p99_vs_idle": round(flood_p99 / idle_p99, 3) if idle_p99 and flood_p99 else None,
            "a_share_of_capacity": ours["flooded"].get("a_share_of_capacity"),
            "lost": ours["flooded"]["b_lost"] + ours["flooded"].get("a_lost", 0),
        }
    return out


def headline(result: dict[str, Any]) -> list[tuple[str, Any, str, bool]]:
    targets = result.get("targets") or {}
    ratio = targets.get("b_p99_vs_idle")
    share = targets.get("a_share_of_capacity")
    lost = targets.get("lost")
    return [
        ("fairness_b_ttft_p99_vs_idle", ratio, "<= 2.0", ratio is not None and ratio <= 2.0),
        ("fairness_a_share_of_capacity", share, ">= 0.9", share is not None and share >= 0.9),
        ("fairness_lost_requests", lost, "== 0", lost == 0),
    ]
