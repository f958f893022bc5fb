"""results.json -> results.md (tables) and results.png (chart).

    python bench/report.py bench/results/results.json

Needs matplotlib (hack/bench.sh installs it into the benchmark's own environment).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ORDER = ["direct", "caddy", "minimal", "litellm", "tollgate"]
LABELS = {
    "direct": "upstream directly",
    "caddy": "Caddy reverse_proxy",
    "minimal": "minimal FastAPI+aiohttp",
    "litellm": "LiteLLM proxy",
    "tollgate": "Tollgate (all features)",
}


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def systems(doc: dict[str, Any]) -> list[str]:
    present = {s for table in doc["summary"].values() for s in table}
    return [s for s in ORDER if s in present]


def overhead_table(doc: dict[str, Any]) -> list[str]:
    summary = doc["summary"]
    conc = [c for c in doc["parameters"]["concurrency"] if c != 1]
    head = ["system", "c=1 p50 ms", "added p50 ms", "c=1 p99 ms"]
    for c in conc:
        head += [f"c={c} req/s", f"c={c} p50 ms", f"c={c} p99 ms"]
    head += ["embeddings c=32 req/s", "CPU µs/req (c=32)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    direct_p50 = summary.get("chat-c1", {}).get("direct", {}).get("p50_ms")
    for name in systems(doc):
        c1 = summary.get("chat-c1", {}).get(name, {})
        added = (
            c1.get("p50_ms") - direct_p50
            if name != "direct" and c1.get("p50_ms") is not None and direct_p50 is not None
            else None
        )
        row = [
            LABELS.get(name, name),
            fmt(c1.get("p50_ms"), 3),
            fmt(added, 3),
            fmt(c1.get("p99_ms")),
        ]
        for c in conc:
            r = summary.get(f"chat-c{c}", {}).get(name, {})
            row += [fmt(r.get("rps")), fmt(r.get("p50_ms")), fmt(r.get("p99_ms"))]
        emb = summary.get("embeddings-c32", {}).get(name, {})
        c32 = summary.get("chat-c32", {}).get(name, {})
        row += [fmt(emb.get("rps")), fmt(c32.get("sut_cpu_us_per_request"), 0)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def streaming_table(doc: dict[str, Any]) -> list[str]:
    summary = doc["summary"]
    streams = doc["parameters"]["streams"]
    head = ["system"]
    for n in streams:
        head += [
            f"{n}: streams/s",
            f"{n}: TTFT p50 ms",
            f"{n}: added TTFT p50 ms",
            f"{n}: gap p50 / p99 ms",
            f"{n}: errors",
        ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in systems(doc):
        row = [LABELS.get(name, name)]
        for n in streams:
            r = summary.get(f"stream-c{n}", {}).get(name, {})
            d = summary.get(f"stream-c{n}", {}).get("direct", {})
            added = (
                r["ttft_p50_ms"] - d["ttft_p50_ms"]
                if name != "direct" and r.get("ttft_p50_ms") is not None and d.get("ttft_p50_ms")
                else None
            )
            row += [
                fmt(r.get("completed_per_s"), 1),
                fmt(r.get("ttft_p50_ms")),
                fmt(added),
                f"{fmt(r.get('gap_p50_ms'))} / {fmt(r.get('gap_p99_ms'))}",
                fmt(r.get("errors")),
            ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def saturation_table(doc: dict[str, Any]) -> list[str]:
    head = [
        "workload",
        "system",
        "SUT cores",
        "generator cores",
        "CPU 1 by our processes",
        "datastore cores",
        "CPU 0 busy",
        "CPU 1 busy",
        "other load on CPU 0",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    side = "cpu" + str(doc["parameters"]["side_cpus"]).split(",")[0]
    sut = "cpu" + str(doc["parameters"]["sut_cpus"]).split(",")[0]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in doc["samples"]:
        groups.setdefault((s["workload"], s["system"]), []).append(s)
    for (workload, name), group in groups.items():
        cpu = [g["cpu"] for g in group]

        def med(values: list[float]) -> float:
            values = sorted(values)
            return values[len(values) // 2]

        sut_cores = med(
            [
                sum(p["cores_used"] for p in c["processes"].values() if p["role"] == "sut")
                for c in cpu
            ]
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    workload,
                    name,
                    fmt(sut_cores),
                    fmt(med([c["generator"]["cores_used"] for c in cpu])),
                    fmt(med([c["side_total_cores"] for c in cpu])),
                    fmt(med([c.get("datastore_cores", 0.0) for c in cpu])),
                    fmt(med([c["core_busy"].get(sut, 0.0) for c in cpu])),
                    fmt(med([c["core_busy"].get(side, 0.0) for c in cpu])),
                    fmt(med([c["foreign_on_sut_cpu"] for c in cpu])),
                ]
            )
            + " |"
        )
    return lines


def soak_table(soak: dict[str, Any]) -> list[str]:
    head = [
        "process",
        "RSS after warm-up MiB",
        "RSS at end MiB",
        "RSS max MiB",
        "RSS growth %",
        "PSS after warm-up MiB",
        "PSS at end MiB",
        "PSS growth %",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, g in soak["growth"].items():
        p = g.get("pss") or {}
        lines.append(
            f"| {name} | {fmt(g['after_warmup_mib'], 1)} | {fmt(g['end_mib'], 1)} | "
            f"{fmt(g['max_mib'], 1)} | {fmt(g['growth_pct'])} | "
            f"{fmt(p.get('after_warmup_mib'), 1)} | {fmt(p.get('end_mib'), 1)} | "
            f"{fmt(p.get('growth_pct'))} |"
        )
    return lines


def markdown(doc: dict[str, Any], png: str) -> str:
    m = doc["machine"]
    p = doc["parameters"]
    out = [
        "# Tollgate benchmark",
        "",
        f"Run {doc['started']} to {doc['finished']} UTC, commit `{doc['git_commit']}`, "
        f"{m['cpu_model']} ({m['cpus']} CPUs{', virtual machine' if m['virtualized'] else ''}), "
        f"{m['memory_gib']} GiB, {m['os']}, Linux {m['kernel']}, Python {m['python']}. "
        f"Load average before/after: {doc['load_average_before']} / "
        f"{doc['load_average_after']}.",
        "",
        "All systems ran in this one run on this one machine, in front of the same upstreams, "
        f"measured in turn, round after round ({p['rounds']} rounds of {p['seconds']:g} s for "
        f"whole responses, {p['stream_rounds']} of {p['stream_seconds']:g} s for streams); each "
        "figure is the median of its rounds. Compare the systems with each other — the ratios "
        "— rather than with other machines.",
        "",
        f"![results]({png})",
        "",
        "## Headline (targets for this 2-core machine, one gateway worker, all features on)",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
    ]
    for item in doc["headline"].values():
        met = {True: "yes", False: "**no**", None: "not measured"}[item["met"]]
        if item["target"] == "reported" and item["value"] is not None:
            met = "(no target)"
        out.append(f"| {item['label']} | {fmt(item['value'], 3)} | {item['target']} | {met} |")
    out += [
        "",
        "## Whole responses (non-streaming chat, fixed upstream)",
        "",
        "Added latency is the system's median minus the upstream's own (`direct`). CPU µs/req is "
        "the CPU time the system under test spent per request at 32 concurrent.",
        "",
        *overhead_table(doc),
        "",
        "## Streaming (chat with `stream_options.include_usage`, Ollama stand-in "
        f"{p['ttft_ms']:g} ms to first token, {p['tokens_per_second']:g} tokens/s, "
        f"{p['completion_tokens']} tokens)",
        "",
        "TTFT: from sending the request to the first `data:` event. Gap: time between "
        "consecutive events of one stream. Closed loop: each of N clients opens its next stream "
        "when one ends.",
        "",
        *streaming_table(doc),
        "",
    ]
    soak = doc.get("soak")
    if soak:
        streams = soak.get("streams", {})
        wrk = soak.get("wrk", {})
        requests = wrk.get("requests", 0)
        seconds = wrk.get("duration_us", 1) / 1e6
        acc = soak.get("tollgate_accounting", {})
        out += [
            f"## Soak ({soak['seconds']:g} s, Tollgate only)",
            "",
            f"Load: wrk {p['soak_connections']} connections of whole responses "
            f"({requests:,} requests, {requests / seconds:,.0f} req/s, "
            f"{sum(wrk.get('errors', {}).values())} errors) plus {p['soak_streams']} concurrent "
            f"streams ({streams.get('streams_completed', 0):,} completed, "
            f"{streams.get('errors', 0)} errors). RSS sampled every "
            f"{soak['sample_interval_seconds']:g} s; growth is the mean of the last three "
            f"samples against the first after {soak['warmup_seconds']:g} s of warm-up. RSS "
            "counts pages shared between processes once per process (PostgreSQL's shared "
            "buffers, once per backend); PSS shares them out, so a tree adds up correctly. "
            "PostgreSQL holds the usage rows written meanwhile, so it grows with its data; "
            "Valkey keeps each key's log of the last 60 s of requests (bounded), and its RSS "
            "can still grow with allocator fragmentation from that churn (`INFO memory`: "
            "`used_memory` against `used_memory_rss`).",
            "",
            *soak_table(soak),
            "",
            "Evidence that usage logging and metrics ran (Tollgate's own counters after the soak): "
            + ", ".join(f"`{k}` = {v:,.0f}" for k, v in acc.items()),
            "",
        ]
    out += routing_section(doc.get("routing"), "40/30/20/10 % of requests per model")
    out += routing_section(doc.get("routing_even"), "an even mix of models")
    out += fairness_section(doc.get("fairness"))
    out += fairness_section(doc.get("fairness_varied"))
    out += [
        "## Did the load generator or the upstream saturate?",
        "",
        "Cores used over each measurement (median of the rounds). The load generators and "
        f"upstreams share CPU {p['side_cpus']}; 'CPU {p['side_cpus']} by our processes' adds "
        f"them up. Tollgate's PostgreSQL and Valkey run on CPU {p.get('datastore_cpus', '?')} "
        "('datastore cores'). 'Other load on CPU 0' is what the machine ran on the systems' "
        "core besides our processes (other work on a shared machine).",
        "",
        *saturation_table(doc),
        "",
        "## Placement",
        "",
        *[f"- {k.replace('_', ' ')}: {v}" for k, v in doc["placement"].items()],
        "",
        "## Systems, versions and exact commands",
        "",
    ]
    for name in systems(doc):
        info = doc["systems"].get(name, {})
        out.append(f"### {LABELS.get(name, name)}")
        if info.get("version"):
            out.append(f"- version: {info['version']}")
        if info.get("mode"):
            out.append(f"- mode: {info['mode']}")
        for note in info.get("notes", []):
            out.append(f"- {note}")
        if info.get("key"):
            out.append(f"- key: `{json.dumps(info['key'])}`")
        if info.get("env"):
            out.append(f"- environment: `{json.dumps(info['env'])}`")
        for command in info.get("commands", []):
            out.append(f"- `{command}`")
        out.append("")
    out += ["### Upstreams", ""]
    for name, up in doc["upstreams"].items():
        out.append(f"- {name} ({up['what']}): `{up['command']}`")
    out += ["", "### Load generators (one example of each)", ""]
    seen: set[str] = set()
    for s in doc["samples"]:
        kind = "stream" if s["kind"] == "stream" else "wrk"
        if kind not in seen:
            seen.add(kind)
            out.append(f"- `{s['command']}`")
    out += ["", "### Versions", ""]
    out += [f"- {k}: {v}" for k, v in doc["versions"].items()]
    out += [
        "",
        "Requests: `"
        + json.dumps(doc["requests"]["chat"])
        + "` and `"
        + json.dumps(doc["requests"]["embeddings"])
        + "`.",
        "",
    ]
    return "\n".join(out)


def routing_section(routed: dict[str, Any] | None, mix: str) -> list[str]:
    """The routing scenario: loads, TTFT and throughput of each policy, on one mix."""
    if not routed:
        return []
    p = routed["parameters"]
    out = [
        f"## Routing ({mix})",
        "",
        f"{p['replicas']} stand-in replicas, 1 loaded model each ({p['load_ms']:g} ms to load "
        f"one), {p['conversations']} conversations of {p['turns']} turns sharing system "
        f"prompts, {p['concurrency']} at a time; mix "
        + "/".join(f"{w:g}" for w in p["weights"])
        + ".",
        "",
        "| system | model loads | TTFT p50 ms | TTFT p99 ms | tokens/s | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in routed["systems"].items():
        out.append(
            f"| {name} | {r['model_loads']} | {fmt(r['ttft_p50_ms'], 1)} "
            f"| {fmt(r['ttft_p99_ms'], 1)} | {fmt(r['tokens_per_second'], 1)} | {r['errors']} |"
        )
    return [*out, ""]


def fairness_section(fair: dict[str, Any] | None) -> list[str]:
    """The fairness scenario: B's TTFT and A's throughput, Tollgate's queue vs the FIFO."""
    if not fair:
        return []
    p = fair["parameters"]
    spread = p.get("a_length_spread", 0)
    out = [
        "## Fairness (one full pool, two keys"
        + (f"; A's sizes {p['completion_tokens']} ± {spread} tokens)" if spread else ")"),
        "",
        f"Key A floods {p['flood']} concurrent streams for {p['seconds']:g} s, key B sends "
        f"{p['b_rate']:g} streams/s; the pool has {p['parallel']} slots. 'fifo' passes the "
        "requests straight to the stand-in, whose queue is first in, first out like Ollama's.",
        "",
        "| system | B TTFT p50 idle | B TTFT p99 idle | B TTFT p50 flooded | B TTFT p99 flooded "
        "| A tokens/s | A share of capacity | lost |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in fair["systems"].items():
        idle, flooded = r["idle"], r["flooded"]
        lost = flooded["b_lost"] + flooded.get("a_lost", 0) + idle["b_lost"]
        out.append(
            f"| {name} | {fmt(idle['b_ttft_p50_ms'], 1)} | {fmt(idle['b_ttft_p99_ms'], 1)} "
            f"| {fmt(flooded['b_ttft_p50_ms'], 1)} | {fmt(flooded['b_ttft_p99_ms'], 1)} "
            f"| {fmt(flooded.get('a_tokens_per_second'), 1)} "
            f"| {fmt(flooded.get('a_share_of_capacity'), 3)} | {lost} |"
        )
    return [*out, ""]


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = doc["summary"]
    names = systems(doc)
    proxies = [n for n in names if n != "direct"]
    colors = {
        "direct": "#999999",
        "caddy": "#4c78a8",
        "minimal": "#72b7b2",
        "litellm": "#e45756",
        "tollgate": "#54a24b",
        "postgres": "#b279a2",
        "valkey": "#e45756",
        "upstream-fixed": "#4c78a8",
        "upstream-standin": "#f58518",
    }
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(
        f"Tollgate benchmark {doc['started'][:10]} — {doc['machine']['cpus']} CPUs, "
        "one worker per system, same run, same upstreams",
        fontsize=12,
    )

    ax = axes[0][0]
    conc = [c for c in doc["parameters"]["concurrency"] if c != 1]
    width = 0.8 / max(1, len(conc))
    for i, c in enumerate(conc):
        values = [summary.get(f"chat-c{c}", {}).get(n, {}).get("rps") or 0 for n in names]
        xs = [x + i * width for x in range(len(names))]
        bars = ax.bar(
            xs,
            values,
            width,
            label=f"{c} concurrent",
            color=[colors[n] for n in names],
            alpha=1 - 0.35 * i,
        )
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                f"{v:,.0f}",
                (bar.get_x() + bar.get_width() / 2, v),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_yscale("log")
    ax.set_xticks([x + width * (len(conc) - 1) / 2 for x in range(len(names))])
    ax.set_xticklabels(names)
    ax.set_title("Non-streaming chat: requests/s (log scale)")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    direct = summary.get("chat-c1", {}).get("direct", {}).get("p50_ms") or 0.0
    added = [
        (summary.get("chat-c1", {}).get(n, {}).get("p50_ms") or direct) - direct for n in proxies
    ]
    bars = ax.bar(proxies, added, color=[colors[n] for n in proxies])
    for bar, v in zip(bars, added, strict=True):
        ax.annotate(
            f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8
        )
    ax.axhline(0.7, color="black", linestyle="--", linewidth=1, label="Tollgate target 0.7 ms")
    ax.set_yscale("log")
    ax.set_title("Added median latency at 1 concurrent, ms (log scale)")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    streams = doc["parameters"]["streams"]
    width = 0.8 / max(1, len(streams))
    for i, n_streams in enumerate(streams):
        table = summary.get(f"stream-c{n_streams}", {})
        base = table.get("direct", {}).get("ttft_p50_ms") or 0.0
        actual = [(table.get(n, {}).get("ttft_p50_ms") or base) - base for n in proxies]
        values = [max(0.01, v) for v in actual]  # a log scale shows no negatives: labelled
        xs = [x + i * width for x in range(len(proxies))]
        bars = ax.bar(
            xs,
            values,
            width,
            label=f"{n_streams} streams",
            color=[colors[n] for n in proxies],
            alpha=1 - 0.35 * i,
        )
        for bar, v, a in zip(bars, values, actual, strict=True):
            ax.annotate(
                f"{a:.1f}",
                (bar.get_x() + bar.get_width() / 2, v),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="target 1 ms (100 streams)")
    ax.set_yscale("log")
    ax.set_xticks([x + width * (len(streams) - 1) / 2 for x in range(len(proxies))])
    ax.set_xticklabels(proxies)
    ax.set_title("Streaming: added median time to first token, ms (log scale)")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    soak = doc.get("soak")
    if soak:
        for name, points in soak.get("pss_mib", soak["rss_mib"]).items():
            if points:
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    label=name,
                    color=colors.get(name),
                )
        ax.axvline(
            soak["warmup_seconds"],
            color="black",
            linestyle=":",
            linewidth=1,
            label="end of warm-up",
        )
        growth = soak["growth"].get("tollgate", {}).get("growth_pct")
        ax.set_title(f"Soak: memory (PSS, MiB); Tollgate RSS growth {fmt(growth)} %")
        ax.set_xlabel("seconds")
        ax.legend(fontsize=8)
    else:
        ax.set_title("Soak: not run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/results.json")
    doc = json.loads(source.read_text())
    png = source.with_suffix(".png")
    chart(doc, png)
    source.with_suffix(".md").write_text(markdown(doc, png.name))
    print(f"report: wrote {source.with_suffix('.md')} and {png}")


if __name__ == "__main__":
    main()
