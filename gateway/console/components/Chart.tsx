"use client";

import type { SeriesPoint } from "@/lib/api";

// A bar chart in plain SVG (no inline styles, so the strict CSP holds). The same numbers are in
// the table below it, and the chart carries a text summary for screen readers.
export function BarChart({
  points,
  metric,
  bucket,
}: {
  points: SeriesPoint[];
  metric: "requests" | "tokens" | "cost";
  bucket: "hour" | "day";
}) {
  const values = points.map((p) => (metric === "cost" ? Number(p.cost) : p[metric]));
  const max = Math.max(1e-9, ...values);
  const width = 800;
  const height = 200;
  const pad = 28;
  const barW = points.length ? (width - pad) / points.length : 0;
  const label = (iso: string) => {
    const d = new Date(iso);
    return bucket === "hour"
      ? d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", timeZone: "UTC" })
      : d.toLocaleDateString("en-GB", { day: "2-digit", month: "short", timeZone: "UTC" });
  };
  const total = values.reduce((a, b) => a + b, 0);
  const summary = `${metric} per ${bucket}: ${points.length} ${bucket}s, total ${
    metric === "cost" ? `$${total.toFixed(4)}` : total.toLocaleString("en-US")
  }, peak ${metric === "cost" ? `$${max.toFixed(4)}` : max.toLocaleString("en-US")}`;
  const step = Math.max(1, Math.ceil(points.length / 8));
  return (
    <figure>
      <svg
        viewBox={`0 0 ${width} ${height + 24}`}
        className="h-56 w-full"
        role="img"
        aria-label={summary}
        data-testid="usage-chart"
      >
        <line x1={pad} y1={height} x2={width} y2={height} className="stroke-slate-300" />
        <text x={0} y={12} className="fill-slate-600 text-[11px]">
          {metric === "cost" ? `$${max.toFixed(2)}` : Math.round(max).toLocaleString("en-US")}
        </text>
        {points.map((p, i) => {
          const v = values[i] ?? 0;
          const h = Math.max(v > 0 ? 2 : 0, (v / max) * (height - 16));
          return (
            <g key={p.bucket}>
              <rect
                x={pad + i * barW + barW * 0.1}
                y={height - h}
                width={Math.max(1, barW * 0.8)}
                height={h}
                className="fill-blue-600"
              >
                <title>{`${label(p.bucket)}: ${metric === "cost" ? `$${v.toFixed(6)}` : v}`}</title>
              </rect>
              {i % step === 0 ? (
                <text x={pad + i * barW} y={height + 16} className="fill-slate-600 text-[11px]">
                  {label(p.bucket)}
                </text>
              ) : null}
            </g>
          );
        })}
      </svg>
      <figcaption className="sr-only">{summary}</figcaption>
    </figure>
  );
}
