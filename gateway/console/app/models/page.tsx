"use client";

import { Badge, Card, Empty, ErrorBox, Loading, PageHeader, Table, td, th } from "@/components/ui";
import { money, request, type Model } from "@/lib/api";
import { useData } from "@/lib/useData";

export default function ModelsPage() {
  const { data, error, loading } = useData(() => request<Model[]>("/admin/models"), []);
  return (
    <>
      <PageHeader title="Models" />
      <p className="mb-4 max-w-3xl text-sm text-slate-700">
        The aliases clients name, the backend model each one runs and where. Aliases that a
        ModelPool resource manages are changed through that resource.
      </p>
      <ErrorBox error={error} />
      {loading && !data ? <Loading /> : null}
      {data && data.length === 0 ? (
        <Empty>No models yet. Add one with POST /admin/models, or apply a ModelPool resource.</Empty>
      ) : null}
      {data && data.length > 0 ? (
        <Card>
          <Table label="Models">
            <thead>
              <tr>
                <th scope="col" className={th}>Alias</th>
                <th scope="col" className={th}>Backend model</th>
                <th scope="col" className={th}>Pool / upstream</th>
                <th scope="col" className={th}>State</th>
                <th scope="col" className={`${th} text-right`}>Input / 1M tokens</th>
                <th scope="col" className={`${th} text-right`}>Output / 1M tokens</th>
              </tr>
            </thead>
            <tbody>
              {data.map((m) => (
                <tr key={m.id}>
                  <td className={`${td} font-medium`}>{m.alias}</td>
                  <td className={`${td} font-mono text-xs`}>{m.backend_tag}</td>
                  <td className={`${td} break-all text-xs`}>
                    {m.managed_by ? <Badge tone="blue">{m.managed_by.replace(/^operator:/, "ModelPool ")}</Badge> : null}
                    <div className="font-mono">{m.backend_url ?? "default upstream"}</div>
                  </td>
                  <td className={td}>{m.enabled ? <Badge tone="green">enabled</Badge> : <Badge tone="amber">disabled</Badge>}</td>
                  <td className={`${td} text-right tabular-nums`}>{money(m.input_price_per_mtok)}</td>
                  <td className={`${td} text-right tabular-nums`}>{money(m.output_price_per_mtok)}</td>
                </tr>
              ))}
            </tbody>
          </Table>
        </Card>
      ) : null}
    </>
  );
}
