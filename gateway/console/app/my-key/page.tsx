"use client";

import { useState, type FormEvent } from "react";
import { BudgetBar, Button, Card, ErrorBox, Field, PageHeader, Stat, inputClass } from "@/components/ui";
import { ApiError, count, money, when, type SelfKey } from "@/lib/api";
import { selfKey } from "@/lib/keyinfo";

function limit(value: number | null, unit: string): string {
  return value === null ? "unlimited" : `${value.toLocaleString("en-US")} ${unit}`;
}

export default function MyKeyPage() {
  const [apiKey, setApiKey] = useState("");
  const [info, setInfo] = useState<SelfKey | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function look(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      setInfo(await selfKey(apiKey.trim()));
    } catch (err) {
      setInfo(null);
      setError(
        err instanceof ApiError && err.status === 401
          ? "This key is not valid: it may be revoked, expired or mistyped."
          : err instanceof Error
            ? err.message
            : String(err),
      );
    } finally {
      setBusy(false);
    }
  }

  const budget = info?.monthly_budget === null || info === null ? null : Number(info.monthly_budget);
  return (
    <>
      <PageHeader title="My key" />
      <p className="mb-4 max-w-3xl text-sm text-slate-700">
        Paste your API key to see what it may use, its limits and this month&apos;s spend. No admin
        account is needed, and nothing about other keys is shown. The key is not stored.
      </p>
      <Card className="mb-6">
        <form onSubmit={look} className="flex flex-wrap items-end gap-3">
          <div className="min-w-[18rem] flex-1">
            <Field label="API key" id="my-key">
              <input
                id="my-key"
                type="password"
                autoComplete="off"
                spellCheck={false}
                value={apiKey}
                onChange={(e) => setApiKey(e.target.value)}
                placeholder="tg-…"
                className={`${inputClass} font-mono`}
              />
            </Field>
          </div>
          <Button type="submit" disabled={busy || !apiKey.trim()}>
            {busy ? "Looking up…" : "Show my key"}
          </Button>
          {info ? (
            <Button variant="secondary" onClick={() => { setInfo(null); setApiKey(""); }}>
              Forget
            </Button>
          ) : null}
        </form>
      </Card>
      <ErrorBox error={error} />
      {info ? (
        <div className="flex flex-col gap-6" data-testid="my-key-info">
          <Card title={info.name}>
            <dl className="grid gap-x-6 gap-y-2 text-sm sm:grid-cols-[max-content_1fr]">
              <dt className="font-medium text-slate-700">Key</dt>
              <dd className="font-mono">{info.key_prefix}…</dd>
              <dt className="font-medium text-slate-700">Owner</dt>
              <dd>{info.owner ?? "—"}</dd>
              <dt className="font-medium text-slate-700">App</dt>
              <dd>{info.app ?? "—"}</dd>
              <dt className="font-medium text-slate-700">Models</dt>
              <dd data-testid="my-models">{info.models.length ? info.models.join(", ") : "none enabled"}</dd>
              <dt className="font-medium text-slate-700">Rate limit</dt>
              <dd>{limit(info.rate_limit_rpm, "requests / min")}</dd>
              <dt className="font-medium text-slate-700">Token limit</dt>
              <dd>{limit(info.tpm_limit, "tokens / min")}</dd>
              <dt className="font-medium text-slate-700">Concurrency</dt>
              <dd>{limit(info.concurrency_limit, "at once")}</dd>
              <dt className="font-medium text-slate-700">Expires</dt>
              <dd>{info.expires_at ? when(info.expires_at) : "never"}</dd>
            </dl>
          </Card>
          <div className="grid grid-cols-2 gap-4 lg:grid-cols-4">
            <Stat label={`Spent in ${info.month}`} value={money(info.spent)} />
            <Stat label="Monthly budget" value={budget === null ? "none" : money(budget)} />
            <Stat label="Remaining" value={info.remaining === null ? "—" : money(info.remaining)} />
            <Stat label="Requests (30 days)" value={count(info.usage_30d.requests)} hint={`${count(info.usage_30d.errors)} errors · ${count(info.usage_30d.prompt_tokens + info.usage_30d.completion_tokens)} tokens`} />
          </div>
          {budget !== null ? (
            <Card title="Budget">
              <BudgetBar spent={Number(info.spent)} budget={budget} />
            </Card>
          ) : null}
        </div>
      ) : null}
    </>
  );
}
