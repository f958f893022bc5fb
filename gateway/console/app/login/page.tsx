"use client";

import Link from "next/link";
import { useRouter } from "next/navigation";
import { useState, type FormEvent } from "react";
import { useSession } from "@/components/Shell";
import { Button, ErrorBox, Field, inputClass } from "@/components/ui";
import { request, setToken } from "@/lib/api";

export default function LoginPage() {
  const router = useRouter();
  const { refresh } = useSession();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const token = await request<{ access_token: string }>("/admin/login", {
        method: "POST",
        body: JSON.stringify({ email, password }),
        bearer: null,
      });
      setToken(token.access_token);
      await refresh();
      const next = new URLSearchParams(window.location.search).get("next");
      router.replace(next && next.startsWith("/") && !next.startsWith("//") ? next : "/");
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="mx-auto mt-10 max-w-sm">
      <h1 className="mb-2 text-2xl font-semibold">Log in</h1>
      <p className="mb-6 text-sm text-slate-700">
        For platform admins and viewers. Holding an API key? See{" "}
        <Link className="text-blue-800 underline" href="/my-key/">
          My key
        </Link>
        .
      </p>
      <ErrorBox error={error} />
      <form
        onSubmit={submit}
        className="flex flex-col gap-4 rounded-lg border border-slate-200 bg-white p-5 shadow-sm"
      >
        <Field label="Email" id="email">
          <input
            id="email"
            type="email"
            autoComplete="username"
            required
            value={email}
            onChange={(e) => setEmail(e.target.value)}
            className={inputClass}
          />
        </Field>
        <Field label="Password" id="password">
          <input
            id="password"
            type="password"
            autoComplete="current-password"
            required
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            className={inputClass}
          />
        </Field>
        <Button type="submit" disabled={busy}>
          {busy ? "Logging in…" : "Log in"}
        </Button>
      </form>
    </div>
  );
}
