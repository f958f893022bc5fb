"""The routing scenario: 4 stand-in replicas (1 loaded model each, 2 s to load one), 4 models,
a mixed workload of multi-turn conversations sharing system prompts; Tollgate's routing
(`modelAware`) against round robin (what a Kubernetes Service does) and least connections
(Caddy `lb_policy least_conn`). Each system starts on cold replicas (restarted for it) and is
warmed with one request per model, one after another, before anything is measured: every
policy then starts from one model per replica, as a pool that has been up for a while does.
(Without it, the first wave of requests all wait for the four unavoidable first loads, and
with a few hundred requests those are the p99 of every policy.)

Reported per system: model loads (the replicas' own count), TTFT p50/p99, output tokens/s.
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
import httpx

from tollbench.procs import Proc
from tollbench.systems import Context, Tollgate, _wait_port, free_port

MODELS = ("route-a:latest", "route-b:latest", "route-c:latest", "route-d:latest")
WEIGHTS = (0.4, 0.3, 0.2, 0.1)  # some models are asked for more than others
SYSTEMS = ("tollgate", "round_robin", "least_conn")


def _env(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


EVEN = (0.25, 0.25, 0.25, 0.25)  # the "even" variant: no model needs more than one replica


class Params:
    def __init__(self, weights: tuple[float, ...] | None = None) -> None:
        self.replicas = int(_env("BENCH_ROUTING_REPLICAS", 4))
        self.load_ms = _env("BENCH_ROUTING_LOAD_MS", 2000)
        self.conversations = int(_env("BENCH_ROUTING_CONVERSATIONS", 120))
        self.turns = int(_env("BENCH_ROUTING_TURNS", 3))
        self.concurrency = int(_env("BENCH_ROUTING_CONCURRENCY", 16))
        self.prefill_ms_per_token = _env("BENCH_ROUTING_PREFILL_MS_PER_TOKEN", 1.0)
        self.tokens_per_second = _env("BENCH_ROUTING_TOKENS_PER_SECOND", 100)
        self.completion_tokens = int(_env("BENCH_ROUTING_COMPLETION_TOKENS", 24))
        self.parallel = int(_env("BENCH_ROUTING_PARALLEL", 4))
        # How often each model is asked for (default 40/30/20/10 %; BENCH_ROUTING_WEIGHTS
        # overrides it). The bench also runs the even mix (EVEN), where no model needs more
        # than its one replica's slots: `weights` given here wins over both.
        env = os.environ.get("BENCH_ROUTING_WEIGHTS")
        if weights is None:
            weights = tuple(float(w) for w in env.split(",")) if env else WEIGHTS
        self.weights = weights
        if len(self.weights) != len(MODELS):
            raise ValueError(f"BENCH_ROUTING_WEIGHTS needs {len(MODELS)} weights")

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _system_prompt(model: int, variant: int) -> str:
    # Long shared prefixes (prompt cache hits matter), a few per model.
    words = " ".join(f"rule{model}-{variant}-{i}" for i in range(300))
    return f"You are the assistant of team {model}-{variant}. Follow these rules: {words}"


def workload(p: Params, seed: int = 7) -> list[dict[str, Any]]:
    """Conversations: a model, a system prompt shared with others, and user turns."""
    rng = random.Random(seed)  # noqa: S311  (a reproducible workload, not a secret)
    out = []
    for n in range(p.conversations):
        model = rng.choices(range(len(MODELS)), p.weights)[0]
        out.append(
            {
                "model": model,
                "system": _system_prompt(model, rng.randrange(3)),
                "turns": [f"Conversation {n}, question {t}: what next?" for t in range(p.turns)],
            }
        )
    return out


class Replicas:
    def __init__(self, ctx: Context, p: Params) -> None:
        self.ctx = ctx
        self.p = p
        self.procs: list[Proc] = []
        self.urls: list[str] = []

    def start(self, phase: str) -> None:
        for i in range(self.p.replicas):
            port = free_port()
            argv = [
                sys.executable, "-m", "tollgate_standin", "--port", str(port),
                "--models", ",".join(MODELS),
                "--max-loaded-models", "1",
                "--load-ms", f"{self.p.load_ms:g}",
                "--prefill-ms-per-token", f"{self.p.prefill_ms_per_token:g}",
                "--tokens-per-second", f"{self.p.tokens_per_second:g}",
                "--completion-tokens", str(self.p.completion_tokens),
                "--parallel", str(self.p.parallel),
                "--request-log-size", "0", "--log-level", "warning",
            ]  # fmt: skip
            log = self.ctx.work / "logs" / f"routing-replica-{phase}-{i}.log"
            proc = Proc(f"replica-{i}", argv, self.ctx.side_cpus, log).start()
            _wait_port(port, proc)
            self.procs.append(proc)
            self.urls.append(f"http://127.0.0.1:{port}")

    def stats(self) -> list[dict[str, Any]]:
        return [httpx.get(u + "/_standin/stats", timeout=10).json() for u in self.urls]

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.procs.clear()
        self.urls.clear()


def caddy(ctx: Context, urls: list[str], policy: str, phase: str) -> tuple[Proc, str]:
    port = free_port()
    config = {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {"http": {"servers": {"proxy": {
            "listen": [f"127.0.0.1:{port}"],
            "automatic_https": {"disable": True},
            "routes": [{"handle": [{
                "handler": "reverse_proxy",
                "upstreams": [{"dial": u.split("://", 1)[1]} for u in urls],
                "load_balancing": {"selection_policy": {"policy": policy}},
                "flush_interval": -1,
            }]}],
        }}}},
    }  # fmt: skip
    path = ctx.work / f"caddy-routing-{phase}.json"
    path.write_text(json.dumps(config, indent=2))
    proc = Proc(
        f"caddy-{policy}",
        [str(ctx.caddy), "run", "--config", str(path)],
        ctx.sut_cpus,
        ctx.work / "logs" / f"caddy-routing-{phase}.log",
    ).start()
    _wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


async def _conversation(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    models: list[str],
    conv: dict[str, Any],
    gate: asyncio.Semaphore,
    out: list[dict[str, Any]],
) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": conv["system"]}]
    for turn in conv["turns"]:
        messages.append({"role": "user", "content": turn})
        body = {"model": models[conv["model"]], "messages": messages, "stream": True}
        async with gate:
            started = time.perf_counter()
            ttft = None
            tokens = 0
            text: list[str] = []
            status = 0
            try:
                async with session.post(url, json=body, headers=headers) as resp:
                    status = resp.status
                    async for line in resp.content:
                        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                            continue
                        event = json.loads(line[6:])
                        for choice in event.get("choices") or ():
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                if ttft is None:
                                    ttft = time.perf_counter() - started
                                tokens += 1
                                text.append(piece)
            except aiohttp.ClientError:
                status = -1
            out.append(
                {
                    "status": status,
                    "ttft": ttft,
                    "tokens": tokens,
                    "seconds": time.perf_counter() - started,
                    "model": models[conv["model"]],
                }
            )
        messages.append({"role": "assistant", "content": "".join(text)})


async def _drive(
    url: str, headers: dict[str, str], models: list[str], convs: list[dict[str, Any]], p: Params
) -> tuple[list[dict[str, Any]], float]:
    gate = asyncio.Semaphore(p.concurrency)
    out: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=p.concurrency * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(
            *(_conversation(session, url, headers, models, c, gate, out) for c in convs)
        )
        return out, time.perf_counter() - started


async def _warm(url: str, headers: dict[str, str], models: list[str]) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for model in models:
            body = {"model": model, "messages": [{"role": "user", "content": "warm up"}]}
            async with session.post(url, json=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"warm-up of {model} answered {resp.status}")


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(
    results: list[dict[str, Any]], wall: float, before: list[Any], after: list[Any]
) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == 200 and r["ttft"] is not None]
    ttfts = [r["ttft"] * 1000 for r in ok]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "model_loads": sum(a["loads"] - b["loads"] for a, b in zip(after, before, strict=True)),
        "prompt_cache_hits": sum(
            a["prompt_cache_hits"] - b["prompt_cache_hits"]
            for a, b in zip(after, before, strict=True)
        ),
        "ttft_p50_ms": round(statistics.median(ttfts), 1) if ttfts else None,
        "ttft_p99_ms": round(_quantile(ttfts, 0.99) or 0, 1) if ttfts else None,
        "tokens_per_second": round(sum(r["tokens"] for r in ok) / wall, 1),
        "wall_seconds": round(wall, 2),
        # Where the tail is: each model's share of the requests and its own TTFT p50/p99.
        "by_model": {
            model: {
                "requests": len(mine),
                "ttft_p50_ms": round(statistics.median(mine), 1),
                "ttft_p99_ms": round(_quantile(mine, 0.99) or 0, 1),
            }
            for model in sorted({r["model"] for r in ok})
            for mine in [[r["ttft"] * 1000 for r in ok if r["model"] == model]]
        },
    }


def _provision(tollgate: Tollgate, url: str, replicas: list[str], pool: str) -> str:
    with tollgate.admin(url) as http:
        # A variant run before on the same database left its aliases (other replicas' URLs).
        listed = http.get("/admin/models")
        listed.raise_for_status()
        for row in listed.json():
            if row["alias"] in MODELS:
                http.delete(f"/admin/models/{row['id']}").raise_for_status()
        for model in MODELS:
            http.post(
                "/admin/models",
                json={
                    "alias": model,
                    "backend_tag": model,
                    "replicas": [{"name": f"r{i}", "url": u} for i, u in enumerate(replicas)],
                    "routing": {"pool": pool, "policy": "modelAware"},
                },
            ).raise_for_status()
        created = http.post("/admin/keys", json={"name": "routing", "allowed_models": list(MODELS)})
        created.raise_for_status()
        return str(created.json()["key"])


def run(
    ctx: Context,
    say: Any,
    systems: tuple[str, ...] = SYSTEMS,
    weights: tuple[float, ...] | None = None,
    label: str = "routing",
) -> dict[str, Any]:
    p = Params(weights)
    convs = workload(p)
    say(
        f"{label}: mix {'/'.join(f'{w:g}' for w in p.weights)}, "
        f"{len(convs)} conversations x {p.turns} turns over {p.replicas} replicas, "
        f"concurrency {p.concurrency}"
    )
    out: dict[str, Any] = {"parameters": p.as_dict(), "systems": {}}
    for name in systems:
        replicas = Replicas(ctx, p)
        replicas.start(f"{label}-{name}")
        front: Proc | None = None
        tollgate: Tollgate | None = None
        try:
            if name == "tollgate":
                tollgate = Tollgate(ctx, replicas.urls[0])
                tollgate.extra_env = {"TOLLGATE_ACCESS_LOG": "false"}
                tollgate.provision = False
                url = tollgate.start(replicas.urls[0], label)
                key = _provision(tollgate, url, replicas.urls, f"bench/{label}")
                headers = {"Authorization": f"Bearer {key}"}
                time.sleep(3)  # the gateway reads every replica once
            else:
                policy = "round_robin" if name == "round_robin" else "least_conn"
                front, url = caddy(ctx, replicas.urls, policy, f"{label}-{name}")
                headers = {}
            asyncio.run(_warm(url + "/v1/chat/completions", headers, list(MODELS)))
            before = replicas.stats()
            results, wall = asyncio.run(
                _drive(url + "/v1/chat/completions", headers, list(MODELS), convs, p)
            )
            summary = summarize(results, wall, before, replicas.stats())
            out["systems"][name] = summary
            say(f"{label} {name}: {json.dumps(summary)}")
        finally:
            if tollgate is not None:
                tollgate.stop()
            if front is not None:
                front.stop()
            replicas.stop()
    base = out["systems"].get("round_robin")
    ours = out["systems"].get("tollgate")
    if base and ours:
        out["vs_round_robin"] = {
            "model_loads_ratio": _ratio(ours["model_loads"], base["model_loads"]),
            "ttft_p99_ratio": _ratio(ours["ttft_p99_ms"], base["ttft_p99_ms"]),
            "throughput_ratio": _ratio(ours["tokens_per_second"], base["tokens_per_second"]),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None
