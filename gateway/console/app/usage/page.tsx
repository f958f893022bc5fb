"use client";

import { useState } from "react";
import { BarChart } from "@/components/Chart";
import { Button, Card, Empty, ErrorBox, Field, Loading, PageHeader, Table, inputClass, td, th } from "@/components/ui";
import { count, download, money, ms, request, type Explorer, type GroupBy } from "@/lib/api";
import { useData } from "@/lib/useData";

const RANGES = { "24h": 1, "7d": 7, "30d": 30 } as const;
type Range = keyof typeof RANGES | "custom";

function iso(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function dayInput(d: Date): string {
  return d.toISOString().slice(0, 10);
}

export default function UsagePage() {
  const [range, setRange] = useState<Range>("24h");
  const [groupBy, setGroupBy] = useState<GroupBy>("key");
  const [metric, setMetric] = useState<"requests" | "tokens" | "cost">("requests");
  const today = new Date();
  const [from, setFrom] = useState(dayInput(new Date(today.getTime() - 7 * 86400_000)));
  const [to, setTo] = useState(dayInput(today));
  const [csvError, setCsvError] = useState<string | null>(null);

  function currentWindow(): { since: string; until: string } {
    if (range === "custom") {
      const until = new Date(`${to}T00:00:00Z`);
      until.setUTCDate(until.getUTCDate() + 1);
      return { since: iso(new Date(`${from}T00:00:00Z`)), until: iso(until) };
    }
    const until = new Date();
    return { since: iso(new Date(until.getTime() - RANGES[range] * 86400_000)), until: iso(until) };
  }

  const { data, error, loading } = useData(() => {
    const params = new URLSearchParams({ group_by: groupBy, ...currentWindow() });
    return request<Explorer>(`/admin/console/usage?${params}`);
  }, [range, groupBy, from, to]);

  async function exportCsv() {
    setCsvError(null);
    try {
      const w = data ? { since: data.since, until: data.until } : currentWindow();
      const params = new URLSearchParams({ group_by: groupBy, ...w });
      await download(`/admin/console/usage.csv?${params}`, `tollgate-usage-${groupBy}.csv`);
    } catch (err) {
      setCsvError(err instanceof Error ? err.message : String(err));
    }
  }

  const groupLabel = { key: "Key", app: "App", model: "Model", endpoint: "Endpoint" }[groupBy];

  return (
    <>
      <PageHeader title="Usage explorer">
        <Button variant="secondary" onClick={() => void exportCsv()} disabled={!data}>
          Export CSV
        </Button>
      </PageHeader>
      <Card className="mb-6">
        <div className="flex flex-wrap items-end gap-4">
          <Field label="Time range" id="range">
            <select id="range" value={range} onChange={(e) => setRange(e.target.value as Range)} className={inputClass}>
              <option value="24h">Last 24 hours</option>
              <option value="7d">Last 7 days</option>
              <option value="30d">Last 30 days</option>
              <option value="custom">Custom (UTC days)</option>
            </select>
          </Field>
          {range === "custom" ? (
            <>
              <Field label="From" id="from">
                <input id="from" type="date" value={from} onChange={(e) => setFrom(e.target.value)} className={inputClass} />
              </Field>
              <Field label="To" id="to">
                <input id="to" type="date" value={to} onChange={(e) => setTo(e.target.value)} className={inputClass} />
              </Field>
            </>
          ) : null}
          <Field label="Group by" id="group-by">
            <select id="group-by" value={groupBy} onChange={(e) => setGroupBy(e.target.value as GroupBy)} className={inputClass}>
              <option value="key">Key</option>
              <option value="app">App</option>
              <option value="model">Model</option>
              <option value="endpoint">Endpoint</option>
            </select>
          </Field>
          <Field label="Chart" id="metric">
            <select id="metric" value={metric} onChange={(e) => setMetric(e.target.value as typeof metric)} className={inputClass}>
              <option value="requests">Requests</option>
              <option value="tokens">Tokens</option>
              <option value="cost">Cost</option>
            </select>
          </Field>
        </div>
      </Card>
      <ErrorBox error={error ?? csvError} />
      {loading && !data ? <Loading /> : null}
      {data ? (
        <div className="flex flex-col gap-6">
          <Card title={`${metric[0]?.toUpperCase()}${metric.slice(1)} per ${data.bucket}`}>
            {data.series.length === 0 ? <Empty>No traffic in this range.</Empty> : <BarChart points={data.series} metric={metric} bucket={data.bucket} />}
          </Card>
          <Card title={`By ${groupLabel.toLowerCase()}`}>
            {data.rows.length === 0 ? (
              <Empty>No traffic in this range.</Empty>
            ) : (
              <Table label={`Usage by ${groupLabel.toLowerCase()}`}>
                <thead>
                  <tr>
                    <th scope="col" className={th}>{groupLabel}</th>
                    <th scope="col" className={`${th} text-right`}>Requests</th>
                    <th scope="col" className={`${th} text-right`}>Errors</th>
                    <th scope="col" className={`${th} text-right`}>Tokens in</th>
                    <th scope="col" className={`${th} text-right`}>Tokens out</th>
                    <th scope="col" className={`${th} text-right`}>Cost</th>
                    <th scope="col" className={`${th} text-right`}>Latency p50</th>
                    <th scope="col" className={`${th} text-right`}>Latency p95</th>
                    <th scope="col" className={`${th} text-right`}>TTFT p50</th>
                    <th scope="col" className={`${th} text-right`}>TTFT p95</th>
                  </tr>
                </thead>
                <tbody>
                  {data.rows.map((r) => (
                    <tr key={r.group ?? "none"}>
                      <th scope="row" className={`${td} break-all text-left font-normal`}>{r.label}</th>
                      <td className={`${td} text-right tabular-nums`}>{count(r.requests)}</td>
                      <td className={`${td} text-right tabular-nums`}>{count(r.errors)}</td>
                      <td className={`${td} text-right tabular-nums`}>{count(r.prompt_tokens)}</td>
                      <td className={`${td} text-right tabular-nums`}>{count(r.completion_tokens)}</td>
                      <td className={`${td} text-right tabular-nums`}>{money(r.cost)}</td>
                      <td className={`${td} text-right tabular-nums`}>{ms(r.latency_p50_ms)}</td>
                      <td className={`${td} text-right tabular-nums`}>{ms(r.latency_p95_ms)}</td>
                      <td className={`${td} text-right tabular-nums`}>{ms(r.ttft_p50_ms)}</td>
                      <td className={`${td} text-right tabular-nums`}>{ms(r.ttft_p95_ms)}</td>
                    </tr>
                  ))}
                </tbody>
              </Table>
            )}
            <p className="mt-3 text-xs text-slate-700">
              Hour resolution, from pre-aggregated rollups; percentiles are estimated from latency histograms.
            </p>
          </Card>
        </div>
      ) : null}
    </>
  );
}
