"use client";

import { useEffect, useRef, useState, type FormEvent } from "react";
import { Button, Card, ErrorBox, Field, PageHeader, inputClass } from "@/components/ui";
import { ApiError, money, ms, type SelfKey } from "@/lib/api";
import { selfKey } from "@/lib/keyinfo";
import { recentKey } from "@/lib/scratch";

interface Turn {
  role: "user" | "assistant";
  content: string;
  stats?: { ttft: number | null; total: number; prompt: number; completion: number; cost: number | null };
}

function price(info: SelfKey | null, alias: string, prompt: number, completion: number): number | null {
  const p = info?.prices.find((x) => x.alias === alias);
  if (!p) return null;
  return (Number(p.input_price_per_mtok) * prompt + Number(p.output_price_per_mtok) * completion) / 1e6;
}

export default function PlaygroundPage() {
  const [apiKey, setApiKey] = useState("");
  const [info, setInfo] = useState<SelfKey | null>(null);
  const [model, setModel] = useState("");
  const [prompt, setPrompt] = useState("");
  const [turns, setTurns] = useState<Turn[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const abort = useRef<AbortController | null>(null);

  useEffect(() => {
    const recent = recentKey();
    if (recent) setApiKey(recent);
  }, []);

  async function useKey(event: FormEvent) {
    event.preventDefault();
    setError(null);
    try {
      const found = await selfKey(apiKey.trim());
      setInfo(found);
      setModel(found.models[0] ?? "");
    } catch (err) {
      setInfo(null);
      setError(err instanceof ApiError && err.status === 401 ? "This key is not valid (revoked, expired or mistyped)." : String(err instanceof Error ? err.message : err));
    }
  }

  async function send(event: FormEvent) {
    event.preventDefault();
    if (!prompt.trim() || !model) return;
    setError(null);
    setBusy(true);
    const history: Turn[] = [...turns, { role: "user", content: prompt.trim() }];
    setTurns([...history, { role: "assistant", content: "" }]);
    setPrompt("");
    const controller = new AbortController();
    abort.current = controller;
    const started = performance.now();
    let ttft: number | null = null;
    let text = "";
    let usage = { prompt_tokens: 0, completion_tokens: 0 };
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { Authorization: `Bearer ${apiKey.trim()}`, "Content-Type": "application/json" },
        body: JSON.stringify({
          model,
          stream: true,
          stream_options: { include_usage: true },
          messages: history.map(({ role, content }) => ({ role, content })),
        }),
        signal: controller.signal,
      });
      if (!response.ok || !response.body) {
        const body = (await response.json().catch(() => null)) as { error?: { message?: string } } | null;
        throw new Error(body?.error?.message ?? `${response.status} ${response.statusText}`);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline: number;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).trim();
          buffer = buffer.slice(newline + 1);
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data) as {
            choices?: { delta?: { content?: string } }[];
            usage?: { prompt_tokens: number; completion_tokens: number } | null;
            error?: { message?: string };
          };
          if (chunk.error) throw new Error(chunk.error.message ?? "The stream failed.");
          const delta = chunk.choices?.[0]?.delta?.content;
          if (delta) {
            if (ttft === null) ttft = performance.now() - started;
            text += delta;
            const partial = text;
            setTurns([...history, { role: "assistant", content: partial }]);
          }
          if (chunk.usage) usage = chunk.usage;
        }
      }
      const total = performance.now() - started;
      setTurns([
        ...history,
        {
          role: "assistant",
          content: text,
          stats: {
            ttft,
            total,
            prompt: usage.prompt_tokens,
            completion: usage.completion_tokens,
            cost: price(info, model, usage.prompt_tokens, usage.completion_tokens),
          },
        },
      ]);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
      setTurns(history);
    } finally {
      setBusy(false);
      abort.current = null;
    }
  }

  return (
    <>
      <PageHeader title="Playground" />
      <p className="mb-4 max-w-3xl text-sm text-slate-700">
        Chat through the gateway with an API key. The key stays in this page&apos;s memory; it is
        never stored.
      </p>
      <ErrorBox error={error} />
      <Card className="mb-6">
        <form onSubmit={useKey} className="flex flex-wrap items-end gap-3">
          <div className="min-w-[18rem] flex-1">
            <Field label="API key" id="pg-key">
              <input
                id="pg-key"
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
          <Button type="submit" variant="secondary" disabled={!apiKey.trim()}>
            Use this key
          </Button>
          {info ? (
            <Field label="Model" id="pg-model">
              <select id="pg-model" value={model} onChange={(e) => setModel(e.target.value)} className={inputClass}>
                {info.models.map((m) => (
                  <option key={m} value={m}>
                    {m}
                  </option>
                ))}
              </select>
            </Field>
          ) : null}
        </form>
        {info && info.models.length === 0 ? (
          <p className="mt-3 text-sm text-amber-900">This key may use no enabled model.</p>
        ) : null}
      </Card>
      {info ? (
        <Card title={`Chat with ${model || "…"} as ${info.name}`}>
          <ol className="mb-4 flex flex-col gap-3" aria-live="polite" data-testid="transcript">
            {turns.length === 0 ? <li className="text-sm text-slate-700">No messages yet.</li> : null}
            {turns.map((t, i) => (
              <li key={i} className={t.role === "user" ? "self-end max-w-[80%]" : "max-w-[80%]"}>
                <div className={`whitespace-pre-wrap rounded-lg px-3 py-2 text-sm ${t.role === "user" ? "bg-blue-700 text-white" : "bg-slate-100 text-slate-900"}`} data-role={t.role}>
                  <span className="sr-only">{t.role === "user" ? "You: " : "Assistant: "}</span>
                  {t.content || (busy && i === turns.length - 1 ? "…" : "")}
                </div>
                {t.stats ? (
                  <p className="mt-1 text-xs text-slate-700" data-testid="answer-stats">
                    TTFT {ms(t.stats.ttft)} · total {ms(t.stats.total)} · {t.stats.prompt} in / {t.stats.completion} out tokens · cost {t.stats.cost === null ? "—" : money(t.stats.cost)}
                  </p>
                ) : null}
              </li>
            ))}
          </ol>
          <form onSubmit={send} className="flex flex-col gap-2">
            <Field label="Message" id="pg-prompt">
              <textarea
                id="pg-prompt"
                rows={3}
                value={prompt}
                onChange={(e) => setPrompt(e.target.value)}
                onKeyDown={(e) => {
                  if (e.key === "Enter" && (e.metaKey || e.ctrlKey)) e.currentTarget.form?.requestSubmit();
                }}
                className={inputClass}
              />
            </Field>
            <div className="flex gap-2">
              <Button type="submit" disabled={busy || !prompt.trim() || !model}>
                {busy ? "Streaming…" : "Send"}
              </Button>
              {busy ? (
                <Button variant="secondary" onClick={() => abort.current?.abort()}>
                  Stop
                </Button>
              ) : null}
              {!busy && turns.length > 0 ? (
                <Button variant="secondary" onClick={() => setTurns([])}>
                  Clear
                </Button>
              ) : null}
            </div>
          </form>
        </Card>
      ) : null}
    </>
  );
}
