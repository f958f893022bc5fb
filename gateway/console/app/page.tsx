"use client";

import { useState } from "react";
import { Card, Empty, ErrorBox, Loading, PageHeader, Stat, Table, td, th } from "@/components/ui";
import { count, money, request, type Overview, type TopRow } from "@/lib/api";
import { useData } from "@/lib/useData";

function TopTable({ title, rows, what }: { title: string; rows: TopRow[]; what: string }) {
  return (
    <Card title={title}>
      {rows.length === 0 ? (
        <Empty>No {what} had traffic in this window.</Empty>
      ) : (
        <Table label={title}>
          <thead>
            <tr>
              <th scope="col" className={th}>
                {what}
              </th>
              <th scope="col" className={`${th} text-right`}>
                Requests
              </th>
              <th scope="col" className={`${th} text-right`}>
                Tokens
              </th>
              <th scope="col" className={`${th} text-right`}>
                Cost
              </th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => (
              <tr key={r.group ?? "none"}>
                <td className={`${td} break-all`}>{r.label}</td>
                <td className={`${td} text-right tabular-nums`}>{count(r.requests)}</td>
                <td className={`${td} text-right tabular-nums`}>{count(r.tokens)}</td>
                <td className={`${td} text-right tabular-nums`}>{money(r.cost)}</td>
              </tr>
            ))}
          </tbody>
        </Table>
      )}
    </Card>
  );
}

export default function OverviewPage() {
  const [span, setSpan] = useState<"24h" | "7d">("24h");
  const { data, error, loading } = useData(() => request<Overview>("/admin/console/overview"), []);
  const current = data?.windows.find((w) => w.window === span);
  return (
    <>
      <PageHeader title="Overview">
        <div role="group" aria-label="Time window" className="inline-flex rounded-md border border-slate-300 bg-white">
          {(["24h", "7d"] as const).map((w) => (
            <button
              key={w}
              type="button"
              aria-pressed={span === w}
              onClick={() => setSpan(w)}
              className={`px-3 py-1.5 text-sm ${span === w ? "bg-slate-900 text-white" : "text-slate-800 hover:bg-slate-100"}`}
            >
              Last {w === "24h" ? "24 hours" : "7 days"}
            </button>
          ))}
        </div>
      </PageHeader>
      <ErrorBox error={error} />
      {loading && !data ? <Loading /> : null}
      {current && data ? (
        <div className="flex flex-col gap-6">
          <div className="grid grid-cols-2 gap-4 lg:grid-cols-4" data-testid="overview-stats">
            <Stat label="Requests" value={count(current.totals.requests)} hint={`${count(current.totals.errors)} errors`} />
            <Stat
              label="Tokens"
              value={count(current.totals.prompt_tokens + current.totals.completion_tokens)}
              hint={`${count(current.totals.prompt_tokens)} in · ${count(current.totals.completion_tokens)} out`}
            />
            <Stat label="Cost" value={money(current.totals.cost)} />
            <Stat label="Error rate" value={`${(current.totals.error_rate * 100).toFixed(1)}%`} />
          </div>
          <div className="grid grid-cols-2 gap-4 lg:grid-cols-4">
            <Stat label="Active keys" value={count(data.keys_active)} />
            <Stat label="Enabled models" value={count(data.models_enabled)} />
          </div>
          <div className="grid gap-4 lg:grid-cols-3">
            <TopTable title="Top keys" rows={current.top_keys} what="Key" />
            <TopTable title="Top apps" rows={current.top_apps} what="App" />
            <TopTable title="Top models" rows={current.top_models} what="Model" />
          </div>
        </div>
      ) : null}
    </>
  );
}
