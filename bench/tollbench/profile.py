"""Where the gateway's time goes: py-spy samples Tollgate while wrk or streamload loads it.

    python bench/profile.py --py-spy PATH --streamload PATH [--workload chat-c32|stream-c100]
                            [--seconds 15] [--folded] [--hold] [--routed]

Writes `profile-<workload>.txt` (`-routed.txt` with --routed: routing and the pool queue
on, as the `tollgate-routed` system of the bench) to --out: the load and its result, where
the samples fall (by part of the request path) and the hottest functions. With --folded
also the collapsed stacks (`.folded`, for any flame-graph viewer). --hold keeps the
gateway and its upstreams up and prints their addresses and key instead.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import time
from pathlib import Path

from tollbench import load
from tollbench.run import Bench, Params, say, scrub
from tollbench.systems import CHAT_MODEL, Tollgate, TollgateRouted

# Parts of the request path, matched against a sample's frames in this order.
PARTS = [
    ("usage writes (batched COPY)", ("UsageWriter", "insert_rows")),
    ("limits: settle", ("Limiter.settle", "Limiter._send_settle", "Limiter._settled")),
    ("limits: admit", ("Limiter.admit",)),
    ("limits: Redis replies", ("_Pipe.",)),
    ("lease renewal", ("_renew_loop",)),
    ("upstream: request (aiohttp)", ("Upstream.request",)),
    ("upstream: read body", ("read_body",)),
    ("upstream: stream relay", ("ProxyService._sse", "ProxyService._ndjson")),
    ("upstream: aiohttp I/O", ("aiohttp/",)),
    ("response rewrite", ("_rewrite_whole",)),
    ("accounting: metrics, usage row", ("ProxyService.finish",)),
    ("auth (key cache)", ("ProxyService.authenticate",)),
    ("request checks (parse)", ("chat/schemas.py",)),
    ("alias lookup", ("ProxyService.resolve",)),
    ("sending the response", ("_send_whole", "_send_stream")),
    ("gateway: other", ("tollgate_gateway/",)),
    ("HTTP server (uvicorn, httptools)", ("uvicorn/",)),
]


def summarize_folded(folded: Path, top: int = 30) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    parts: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
        for part, needles in PARTS:
            if any(needle in frame for frame in frames for needle in needles):
                parts[part] += count
                break
        else:
            parts["event loop, idle or unattributed"] += count
    if not samples:
        return "no samples\n"
    lines = [f"{samples} samples", "", "by part of the request path:"]
    for part, count in parts.most_common():
        lines.append(f"{100 * count / samples:6.2f}%  {part}")
    lines += ["", f"top {top} functions by own time:"]
    for frame, count in own.most_common(top):
        lines.append(f"{100 * count / samples:6.2f}%  {frame}")
    lines += ["", f"top {top} functions by total time (own + callees):"]
    for frame, count in total.most_common(top):
        lines.append(f"{100 * count / samples:6.2f}%  {frame}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--py-spy", type=Path, required=True)
    parser.add_argument("--streamload", type=Path, required=True)
    parser.add_argument("--workload", default="chat-c32")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rate", type=int, default=997, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path("bench/results/profiles"))
    parser.add_argument("--folded", action="store_true", help="keep the collapsed stacks")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument(
        "--routed", action="store_true", help="routing and the pool queue on (tollgate-routed)"
    )
    args = parser.parse_args()
    params = Params()
    os.sched_setaffinity(0, {int(c) for c in params.side_cpus.split(",")})
    bench = Bench(params, args.out, args.streamload)
    tollgate: Tollgate | None = None
    try:
        ctx = bench.start_infra()
        tollgate = (TollgateRouted if args.routed else Tollgate)(ctx, bench.standin_url)
        stream = args.workload.startswith("stream")
        url = tollgate.start(bench.standin_url if stream else bench.fixed_url, "profile")
        assert tollgate.proc is not None
        pid = tollgate.proc.pid
        if args.hold:
            say(f"tollgate {url} key {tollgate.key} pid {pid}")
            say(f"admin {tollgate.setup.admin_email} {tollgate.setup.admin_password}")
            say(f"fixed {bench.fixed_url} standin {bench.standin_url}; Ctrl-C to stop")
            stop = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # else a handler takes them first
            signal.sigwait(stop)
            return
        kind, _, concurrency = args.workload.partition("-c")
        target = url + "/v1/chat/completions"
        load.wrk(target, bench.bodies["chat"], tollgate.key, 8, 2, params.side_cpus)  # warm
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"profile-{args.workload}{'-routed' if args.routed else ''}"
        folded = (args.out if args.folded else bench.work) / f"{name}.folded"
        spy = subprocess.Popen(
            [
                str(args.py_spy),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(args.rate),
                "--duration",
                f"{int(args.seconds)}",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(folded),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        if kind == "stream":
            generated = load.streamload(
                args.streamload,
                target,
                tollgate.key,
                CHAT_MODEL,
                int(concurrency),
                args.seconds,
                min(5.0, args.seconds / 4),
                params.side_cpus,
            )
        else:
            generated = load.wrk(
                target,
                bench.bodies["chat"],
                tollgate.key,
                int(concurrency),
                args.seconds,
                params.side_cpus,
            )
        spy.wait()
        header = (
            f"profile of the Tollgate gateway (py-spy {args.rate} Hz, {args.seconds:g} s)\n"
            f"load: {generated.command}\nresult: {generated.output}\n\n"
        )
        text = scrub(header + summarize_folded(folded))
        (args.out / f"{name}.txt").write_text(text)
        print(text)
    finally:
        if tollgate is not None:
            tollgate.stop()
        bench.stop_infra()


if __name__ == "__main__":
    main()
