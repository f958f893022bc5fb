"use client";

import Link from "next/link";
import { useMemo, useState, type FormEvent } from "react";
import { useSession } from "@/components/Shell";
import {
  Badge,
  BudgetBar,
  Button,
  Card,
  Empty,
  ErrorBox,
  Field,
  Loading,
  PageHeader,
  Table,
  inputClass,
  td,
  th,
} from "@/components/ui";
import { money, request, when, type Key, type KeyActivity, type KeyCreated } from "@/lib/api";
import { rememberKey } from "@/lib/scratch";
import { useData } from "@/lib/useData";

interface Limits {
  name: string;
  owner: string;
  app: string;
  allowed_models: string;
  rate_limit_rpm: string;
  tpm_limit: string;
  concurrency_limit: string;
  monthly_budget: string;
}

const EMPTY: Limits = {
  name: "",
  owner: "",
  app: "",
  allowed_models: "*",
  rate_limit_rpm: "",
  tpm_limit: "",
  concurrency_limit: "",
  monthly_budget: "",
};

function fromKey(k: Key): Limits {
  return {
    name: k.name,
    owner: k.owner ?? "",
    app: k.app ?? "",
    allowed_models: k.allowed_models.join(","),
    rate_limit_rpm: k.rate_limit_rpm?.toString() ?? "",
    tpm_limit: k.tpm_limit?.toString() ?? "",
    concurrency_limit: k.concurrency_limit?.toString() ?? "",
    monthly_budget: k.monthly_budget ? String(Number(k.monthly_budget)) : "",
  };
}

function body(form: Limits, forUpdate: boolean): Record<string, unknown> {
  const int = (v: string) => (v.trim() === "" ? null : Number.parseInt(v, 10));
  const text = (v: string) => (v.trim() === "" ? null : v.trim());
  const out: Record<string, unknown> = {
    name: form.name.trim(),
    owner: text(form.owner),
    app: text(form.app),
    allowed_models: form.allowed_models.trim() || "*",
    rate_limit_rpm: int(form.rate_limit_rpm),
    tpm_limit: int(form.tpm_limit),
    concurrency_limit: int(form.concurrency_limit),
    monthly_budget: form.monthly_budget.trim() === "" ? null : form.monthly_budget.trim(),
  };
  if (!forUpdate) for (const k of Object.keys(out)) if (out[k] === null) delete out[k];
  return out;
}

function KeyForm({
  initial,
  submitLabel,
  onSubmit,
  onCancel,
  idPrefix,
}: {
  initial: Limits;
  submitLabel: string;
  onSubmit: (form: Limits) => Promise<void>;
  onCancel: () => void;
  idPrefix: string;
}) {
  const [form, setForm] = useState(initial);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const set = (field: keyof Limits) => (e: { target: { value: string } }) =>
    setForm({ ...form, [field]: e.target.value });

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await onSubmit(form);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  const input = (field: keyof Limits, label: string, hint?: string, type = "text") => (
    <Field label={label} id={`${idPrefix}-${field}`} hint={hint}>
      <input
        id={`${idPrefix}-${field}`}
        type={type}
        min={type === "number" ? 0 : undefined}
        step={field === "monthly_budget" ? "0.01" : undefined}
        value={form[field]}
        onChange={set(field)}
        required={field === "name"}
        className={inputClass}
      />
    </Field>
  );

  return (
    <form onSubmit={submit} className="flex flex-col gap-4">
      <ErrorBox error={error} />
      <div className="grid gap-4 sm:grid-cols-2 lg:grid-cols-4">
        {input("name", "Name")}
        {input("owner", "Owner", "A person or team")}
        {input("app", "App")}
        {input("allowed_models", "Allowed models", "Comma-separated aliases or globs; * for all")}
        {input("rate_limit_rpm", "Requests per minute", "Empty: unlimited", "number")}
        {input("tpm_limit", "Tokens per minute", "Empty: unlimited", "number")}
        {input("concurrency_limit", "Concurrent requests", "Empty: unlimited", "number")}
        {input("monthly_budget", "Monthly budget (USD)", "Empty: no budget", "number")}
      </div>
      <div className="flex gap-2">
        <Button type="submit" disabled={busy}>
          {busy ? "Saving…" : submitLabel}
        </Button>
        <Button variant="secondary" onClick={onCancel}>
          Cancel
        </Button>
      </div>
    </form>
  );
}

function CreatedKey({ created, onDone }: { created: KeyCreated; onDone: () => void }) {
  const [copied, setCopied] = useState<string | null>(null);
  const baseUrl = `${window.location.origin}/v1`;
  async function copy(what: string, text: string) {
    try {
      await navigator.clipboard.writeText(text);
      setCopied(what);
    } catch {
      setCopied(null);
    }
  }
  return (
    <Card title="Key created" className="border-green-300">
      <p className="mb-3 text-sm text-slate-800">
        This is the only time the key is shown: Tollgate stores only its hash. Copy it now.
      </p>
      <div className="flex flex-col gap-3">
        <div className="flex flex-wrap items-center gap-2">
          <code data-testid="new-key" className="break-all rounded bg-slate-100 px-2 py-1 font-mono text-sm">
            {created.key}
          </code>
          <Button variant="secondary" onClick={() => void copy("key", created.key)}>
            Copy key
          </Button>
        </div>
        <div className="flex flex-wrap items-center gap-2 text-sm">
          <span>Base URL for OpenAI clients:</span>
          <code data-testid="base-url" className="rounded bg-slate-100 px-2 py-1 font-mono">
            OPENAI_BASE_URL={baseUrl}
          </code>
          <Button variant="secondary" onClick={() => void copy("url", `OPENAI_BASE_URL=${baseUrl}`)}>
            Copy
          </Button>
        </div>
        <p className="text-sm text-slate-700" role="status" aria-live="polite">
          {copied === "key" ? "Key copied." : copied === "url" ? "Base URL copied." : ""}
        </p>
        <div className="flex gap-2">
          <Link
            href="/playground/"
            className="rounded-md border border-slate-300 px-3 py-1.5 text-sm font-medium text-slate-800 hover:bg-slate-100"
          >
            Try it in the playground
          </Link>
          <Button onClick={onDone}>Done</Button>
        </div>
      </div>
    </Card>
  );
}

function status(k: Key) {
  if (k.revoked_at) return <Badge tone="red">revoked</Badge>;
  if (k.disabled) return <Badge tone="amber">disabled</Badge>;
  if (k.expires_at && new Date(k.expires_at) < new Date()) return <Badge tone="amber">expired</Badge>;
  return <Badge tone="green">active</Badge>;
}

function limits(k: Key): string {
  const parts = [
    k.rate_limit_rpm !== null ? `${k.rate_limit_rpm} rpm` : null,
    k.tpm_limit !== null ? `${k.tpm_limit} tpm` : null,
    k.concurrency_limit !== null ? `${k.concurrency_limit} at once` : null,
  ].filter(Boolean);
  return parts.length ? parts.join(" · ") : "none";
}

export default function KeysPage() {
  const { isAdmin } = useSession();
  const keys = useData(() => request<Key[]>("/admin/keys"), []);
  const activity = useData(() => request<KeyActivity[]>("/admin/console/keys/activity"), []);
  const [creating, setCreating] = useState(false);
  const [created, setCreated] = useState<KeyCreated | null>(null);
  const [editing, setEditing] = useState<string | null>(null);
  const [confirming, setConfirming] = useState<string | null>(null);
  const [showRevoked, setShowRevoked] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const byId = useMemo(() => new Map((activity.data ?? []).map((a) => [a.id, a])), [activity.data]);
  const rows = (keys.data ?? []).filter((k) => showRevoked || !k.revoked_at);

  async function create(form: Limits) {
    const key = await request<KeyCreated>("/admin/keys", {
      method: "POST",
      body: JSON.stringify(body(form, false)),
    });
    rememberKey(key.key);
    setCreated(key);
    setCreating(false);
    await keys.reload();
  }

  async function update(id: string, form: Limits) {
    await request<Key>(`/admin/keys/${id}`, { method: "PATCH", body: JSON.stringify(body(form, true)) });
    setEditing(null);
    await keys.reload();
  }

  async function revoke(id: string) {
    setError(null);
    try {
      await request<Key>(`/admin/keys/${id}`, { method: "DELETE" });
      setConfirming(null);
      await keys.reload();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  }

  return (
    <>
      <PageHeader title="API keys">
        <label className="flex items-center gap-2 text-sm">
          <input type="checkbox" checked={showRevoked} onChange={(e) => setShowRevoked(e.target.checked)} />
          Show revoked
        </label>
        {isAdmin && !creating ? (
          <Button onClick={() => { setCreating(true); setCreated(null); }}>Create key</Button>
        ) : null}
      </PageHeader>
      <ErrorBox error={error ?? keys.error ?? activity.error} />
      {created ? <div className="mb-6"><CreatedKey created={created} onDone={() => setCreated(null)} /></div> : null}
      {creating ? (
        <div className="mb-6">
          <Card title="New key">
            <KeyForm idPrefix="new" initial={EMPTY} submitLabel="Create key" onSubmit={create} onCancel={() => setCreating(false)} />
          </Card>
        </div>
      ) : null}
      {keys.loading && !keys.data ? <Loading /> : null}
      {keys.data && rows.length === 0 ? (
        <Empty>
          No keys yet.{isAdmin ? " Create one, or apply an ApiKey resource in the cluster." : ""}
        </Empty>
      ) : null}
      {rows.length > 0 ? (
        <Card>
          <Table label="API keys">
            <thead>
              <tr>
                <th scope="col" className={th}>Key</th>
                <th scope="col" className={th}>Owner / app</th>
                <th scope="col" className={th}>Models</th>
                <th scope="col" className={th}>Limits</th>
                <th scope="col" className={th}>This month</th>
                <th scope="col" className={th}>Last used</th>
                <th scope="col" className={th}>Status</th>
                {isAdmin ? <th scope="col" className={th}><span className="sr-only">Actions</span></th> : null}
              </tr>
            </thead>
            <tbody>
              {rows.map((k) => {
                const a = byId.get(k.id);
                const spent = Number(a?.month_spend ?? 0);
                const budget = k.monthly_budget === null ? null : Number(k.monthly_budget);
                const managed = k.managed_by?.startsWith("operator:") ? k.managed_by.slice("operator:".length) : k.managed_by;
                return [
                  <tr key={k.id} data-testid={`key-row-${k.id}`}>
                    <td className={td}>
                      <div className="font-medium">{k.name}</div>
                      <code className="font-mono text-xs text-slate-700">{k.key_prefix}…</code>
                      {managed ? (
                        <div className="mt-1">
                          <Badge tone="blue">ApiKey {managed}</Badge>
                        </div>
                      ) : null}
                    </td>
                    <td className={td}>
                      <div>{k.owner ?? "—"}</div>
                      <div className="text-xs text-slate-700">{k.app ?? ""}</div>
                    </td>
                    <td className={`${td} break-all font-mono text-xs`}>{k.allowed_models.join(", ")}</td>
                    <td className={`${td} text-xs`}>{limits(k)}</td>
                    <td className={td}>
                      <div className="tabular-nums">
                        {money(spent)}
                        {budget !== null ? ` of ${money(budget)}` : ""}
                      </div>
                      <BudgetBar spent={spent} budget={budget} />
                    </td>
                    <td className={`${td} text-xs`}>{when(a?.last_used)}</td>
                    <td className={td}>{status(k)}</td>
                    {isAdmin ? (
                      <td className={`${td} whitespace-nowrap`}>
                        {managed ? (
                          <span className="text-xs text-slate-700">Managed by its ApiKey resource</span>
                        ) : k.revoked_at ? null : confirming === k.id ? (
                          <span className="flex gap-1">
                            <Button variant="danger" onClick={() => void revoke(k.id)}>
                              Confirm revoke
                            </Button>
                            <Button variant="secondary" onClick={() => setConfirming(null)}>
                              Cancel
                            </Button>
                          </span>
                        ) : (
                          <span className="flex gap-1">
                            <Button variant="secondary" onClick={() => setEditing(editing === k.id ? null : k.id)} aria-label={`Edit limits of ${k.name}`}>
                              Edit
                            </Button>
                            <Button variant="danger" onClick={() => setConfirming(k.id)} aria-label={`Revoke ${k.name}`}>
                              Revoke
                            </Button>
                          </span>
                        )}
                      </td>
                    ) : null}
                  </tr>,
                  editing === k.id ? (
                    <tr key={`${k.id}-edit`}>
                      <td colSpan={8} className={`${td} bg-slate-50`}>
                        <KeyForm
                          idPrefix={`edit-${k.id}`}
                          initial={fromKey(k)}
                          submitLabel="Save limits"
                          onSubmit={(form) => update(k.id, form)}
                          onCancel={() => setEditing(null)}
                        />
                      </td>
                    </tr>
                  ) : null,
                ];
              })}
            </tbody>
          </Table>
        </Card>
      ) : null}
    </>
  );
}
